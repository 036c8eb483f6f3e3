package lab;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.data.ArrayData;
import org.apache.flink.table.data.GenericArrayData;
import org.apache.flink.table.data.StringData;
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
 * other. The last answer is kept per thread, so every call after the first is a comparison of
 * bytes.
 *
 * <p>Arguments and answer are Flink's own string and array types, not Java's: with {@code String}
 * Flink decodes the whole payload from UTF-8 for every call and encodes every field back, which
 * cost more than the parse itself (a profile of the TaskManager: 14 % of the source thread in
 * those conversions). Jackson reads the UTF-8 bytes as they are.
 */
public final class JsonFields extends ScalarFunction {

    private static final JsonFactory FACTORY = new JsonFactory();
    private static final ObjectMapper MAPPER = new ObjectMapper(FACTORY);

    /** The last payload and field list a thread asked for (copies: ours), and the answer. */
    private static final class Last {
        StringData payload;
        StringData names;
        String[] split;
        StringData[] fields;
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

    public @DataTypeHint(value = "ARRAY<STRING>", bridgedTo = ArrayData.class) ArrayData eval(
            @DataTypeHint(value = "STRING", bridgedTo = StringData.class) StringData payload,
            @DataTypeHint(value = "STRING", bridgedTo = StringData.class) StringData names) {
        if (payload == null || names == null) {
            return null;
        }
        Last last = LAST.get();
        if (payload.equals(last.payload) && names.equals(last.names)) {
            return answer(last.fields);
        }
        if (!names.equals(last.names)) {
            last.split = names.toString().split(",");
            last.names = StringData.fromBytes(names.toBytes().clone());
        }
        byte[] utf8 = payload.toBytes();
        String[] text = parse(utf8, last.split);
        if (text == null) {
            // Jackson refuses bytes that are not UTF-8, where Flink's decoding puts U+FFFD in
            // their place: a reading with such a byte in a text field is read as before, as
            // text (a rare path; good messages never take it).
            text = parse(payload.toString(), last.split);
        }
        StringData[] fields = null;
        if (text != null) {
            fields = new StringData[text.length];
            for (int i = 0; i < text.length; i++) {
                fields[i] = text[i] == null ? null : StringData.fromString(text[i]);
            }
        }
        // A copy: toBytes may hand out the caller's own buffer, which is not ours to keep.
        last.payload = StringData.fromBytes(utf8.clone());
        last.fields = fields;
        return answer(fields);
    }

    /** Callers own what they get: the kept answer must not change under them. */
    private static ArrayData answer(StringData[] fields) {
        return fields == null ? null : new GenericArrayData(fields.clone());
    }

    static String[] parse(byte[] utf8, String[] names) {
        try (JsonParser p = MAPPER.getFactory().createParser(utf8)) {
            return parse(p, names);
        } catch (Exception e) {
            return null;
        }
    }

    static String[] parse(String text, String[] names) {
        try (JsonParser p = MAPPER.getFactory().createParser(text)) {
            return parse(p, names);
        } catch (Exception e) {
            return null;
        }
    }

    /** One streaming pass over the object; NULL unless the payload starts with a JSON object. */
    private static String[] parse(JsonParser p, String[] names) throws java.io.IOException {
        String[] out = new String[names.length];
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
        return t == JsonToken.END_OBJECT ? out : null;
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
