package lab;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.data.TimestampData;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code RECALL_TIME(text)}: the timestamp this thread last parsed from exactly this text (by
 * {@link RememberTime}), or NULL. {@code CASE WHEN RECALL_TIME(s) IS NULL THEN REMEMBER_TIME(s,
 * parse(s)) ELSE RECALL_TIME(s) END} parses {@code s} only when the thread has not just parsed the
 * same text: a CASE evaluates only the branch it takes.
 *
 * <p>A text that did not parse is never remembered, so it is parsed (and refused) each time.
 */
public final class RecallTime extends ScalarFunction {

    /** Its answer depends on what the thread did before: it must be called, never folded. */
    @Override
    public boolean isDeterministic() {
        return false;
    }

    public @DataTypeHint(value = "TIMESTAMP(3)", bridgedTo = TimestampData.class) TimestampData eval(
            @DataTypeHint(value = "STRING", bridgedTo = StringData.class) StringData text) {
        if (text == null) {
            return null;
        }
        LastTime last = LastTime.OF_THREAD.get();
        return text.equals(last.text) ? last.time : null;
    }
}
