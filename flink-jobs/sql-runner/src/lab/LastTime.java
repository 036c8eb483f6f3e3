package lab;

import org.apache.flink.table.data.StringData;
import org.apache.flink.table.data.TimestampData;

/**
 * The last timestamp text a thread parsed, and what it parsed to: shared by {@link RecallTime}
 * and {@link RememberTime}.
 *
 * <p>Why: the job's event-time column is evaluated twice per message, once by the watermark that
 * Flink pushes into the Kafka source and once for the rows, and Flink has no switch that keeps
 * the watermark out of the source. Both evaluations run in the task thread that reads the
 * message, one right after the other, so the second finds the first's answer here instead of
 * parsing the text again.
 */
final class LastTime {

    StringData text;
    TimestampData time;

    static final ThreadLocal<LastTime> OF_THREAD = ThreadLocal.withInitial(LastTime::new);

    private LastTime() {}
}
