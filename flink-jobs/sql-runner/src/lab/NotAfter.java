package lab;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.data.TimestampData;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code NOT_AFTER(t, bound)}: {@code t}, or NULL when it is after {@code bound} (or either is
 * NULL).
 *
 * <p>Why a function for what a CASE says: the job's watermark must ignore a reading stamped far
 * ahead of its message, and a CASE (or NULLIF, which the planner turns into one) names the
 * event time twice. The planner inlines the event-time column's whole expression at every
 * mention, so each mention parses the timestamp again, in the source, for every message; as an
 * argument it is named, and parsed, once.
 */
public final class NotAfter extends ScalarFunction {

    /** Flink's own timestamp type in and out: no conversion to java.time and back per message. */
    public @DataTypeHint(value = "TIMESTAMP(3)", bridgedTo = TimestampData.class) TimestampData eval(
            @DataTypeHint(value = "TIMESTAMP(3)", bridgedTo = TimestampData.class) TimestampData t,
            @DataTypeHint(value = "TIMESTAMP(3)", bridgedTo = TimestampData.class) TimestampData bound) {
        if (t == null || bound == null || t.compareTo(bound) > 0) {
            return null;
        }
        return t;
    }
}
