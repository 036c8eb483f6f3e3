package lab;

import java.time.LocalDateTime;

import org.apache.flink.table.annotation.DataTypeHint;
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

    public @DataTypeHint("TIMESTAMP(3)") LocalDateTime eval(
            @DataTypeHint("TIMESTAMP(3)") LocalDateTime t,
            @DataTypeHint("TIMESTAMP(3)") LocalDateTime bound) {
        if (t == null || bound == null || t.isAfter(bound)) {
            return null;
        }
        return t;
    }
}
