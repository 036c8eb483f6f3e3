package lab;

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
 * the SQL, where the job routes the ones it cannot use to a table of their own. One parse per
 * call; a missing or null field is a NULL element, a scalar its text, anything else its JSON.
 */
public final class JsonFields extends ScalarFunction {

    private static final ObjectMapper MAPPER = new ObjectMapper();

    /**
     * Not true, but it keeps one call per message: the planner inlines a deterministic call into
     * every expression that reads its result (here one per field), a non-deterministic one it
     * evaluates once (FLINK-20887).
     */
    @Override
    public boolean isDeterministic() {
        return false;
    }

    private transient String lastNames;
    private transient String[] lastSplit;

    public @DataTypeHint("ARRAY<STRING>") String[] eval(String payload, String names) {
        if (payload == null || names == null) {
            return null;
        }
        JsonNode root;
        try {
            root = MAPPER.readTree(payload);
        } catch (Exception e) {
            return null;
        }
        if (root == null || !root.isObject()) {
            return null;
        }
        if (!names.equals(lastNames)) {
            lastSplit = names.split(",");
            lastNames = names;
        }
        String[] out = new String[lastSplit.length];
        for (int i = 0; i < lastSplit.length; i++) {
            JsonNode v = root.get(lastSplit[i]);
            if (v == null || v.isNull()) {
                out[i] = null;
            } else if (v.isValueNode()) {
                out[i] = v.asText();
            } else {
                out[i] = v.toString();
            }
        }
        return out;
    }
}
