package lab;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.data.TimestampData;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code REMEMBER_TIME(text, time)}: {@code time}, kept as what {@code text} parses to for the next
 * {@link RecallTime} on this thread. NULL (a text that does not parse) is not kept.
 */
public final class RememberTime extends ScalarFunction {

    /** It changes what RECALL_TIME answers: it must be called for every message, never folded. */
    @Override
    public boolean isDeterministic() {
        return false;
    }

    public @DataTypeHint(value = "TIMESTAMP(3)", bridgedTo = TimestampData.class) TimestampData eval(
            @DataTypeHint(value = "STRING", bridgedTo = StringData.class) StringData text,
            @DataTypeHint(value = "TIMESTAMP(3)", bridgedTo = TimestampData.class) TimestampData time) {
        if (text != null && time != null) {
            LastTime last = LastTime.OF_THREAD.get();
            // Our own copy: the caller's string may sit in a buffer it reuses for the next row
            // (for a string backed by a Java String, toString is that String, no copy).
            last.text = StringData.fromString(text.toString());
            last.time = time;
        }
        return time;
    }
}
