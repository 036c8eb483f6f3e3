package lab;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code JSON_FIELDS(payload, 'a,b,c')}: the named top-level fields of a JSON object as strings,
 * in the order asked, or NULL when the payload is not a JSON object.
 *
 * <p>Why a function instead of Flink's {@code json} format: that format drops a malformed message
 * without a trace ({@code json.ignore-parse-errors}) or fails the job, so a bad record could be
 * neither counted nor kept. Reading the topic as raw text and parsing here keeps every message in
 * the SQL, where the job routes the ones it cannot use to a table of their own. A missing or null
 * field is a NULL element, a scalar its text, anything else its JSON.
 *
 * <p>One parse per message: the job calls this function several times for the same message (the
 * event-time column, which the watermark pushed into the Kafka source evaluates on its own, and
 * the fields), all in the one task thread that reads the message, one call right after the
 * other. The last answer is kept per thread, so every call after the first is a string
 * comparison.
 */
public final class JsonFields extends ScalarFunction {

    private static final JsonFactory FACTORY = new JsonFactory();
    private static final ObjectMapper MAPPER = new ObjectMapper(FACTORY);

    /** The last payload and field list a thread asked for, and the answer. */
    private static final class Last {
        String payload;
        String names;
        String[] split;
        String[] fields;
    }

    private static final ThreadLocal<Last> LAST = ThreadLocal.withInitial(Last::new);

    /**
     * Not true, but it keeps one call per message: the planner inlines a deterministic call into
     * every expression that reads its result (here one per field), a non-deterministic one it
     * evaluates once (FLINK-20887).
     */
    @Override
    public boolean isDeterministic() {
        return false;
    }

    public @DataTypeHint("ARRAY<STRING>") String[] eval(String payload, String names) {
        if (payload == null || names == null) {
            return null;
        }
        Last last = LAST.get();
        if (payload.equals(last.payload) && names.equals(last.names)) {
            return copy(last.fields);
        }
        if (!names.equals(last.names)) {
            last.split = names.split(",");
        }
        String[] fields = parse(payload, last.split);
        last.payload = payload;
        last.names = names;
        last.fields = fields;
        return copy(fields);
    }

    /** Callers own what they get: the kept answer must not change under them. */
    private static String[] copy(String[] fields) {
        return fields == null ? null : fields.clone();
    }

    /** One streaming pass over the object; NULL unless the payload starts with a JSON object. */
    static String[] parse(String payload, String[] names) {
        String[] out = new String[names.length];
        try (JsonParser p = MAPPER.getFactory().createParser(payload)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            JsonToken t;
            while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                JsonToken v = p.nextToken();
                int i = indexOf(names, name);
                if (i < 0) {
                    p.skipChildren();
                    continue;
                }
                if (v == JsonToken.VALUE_NULL) {
                    out[i] = null;
                } else if (v.isScalarValue()) {
                    out[i] = p.getText();
                } else {
                    JsonNode tree = MAPPER.readTree(p);
                    out[i] = tree.toString();
                }
            }
            // As ObjectMapper.readTree before: what follows the object is not looked at.
            if (t != JsonToken.END_OBJECT) {
                return null;
            }
        } catch (Exception e) {
            return null;
        }
        return out;
    }

    private static int indexOf(String[] names, String name) {
        for (int i = 0; i < names.length; i++) {
            if (names[i].equals(name)) {
                return i;
            }
        }
        return -1;
    }
}
