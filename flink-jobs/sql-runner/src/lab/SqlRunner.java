package lab;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Locale;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.flink.configuration.Configuration;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.table.api.EnvironmentSettings;
import org.apache.flink.table.api.StatementSet;
import org.apache.flink.table.api.TableResult;
import org.apache.flink.table.api.bridge.java.StreamTableEnvironment;

/**
 * labctl SQL runner.
 *
 * <p>Program arguments: one SQL statement per argument, each base64 (standard alphabet) encoded
 * UTF-8. Statements run in order: {@code SET 'k' = 'v'} goes into the configuration, every
 * {@code INSERT ...} is added to one StatementSet that is executed at the end (one job), anything
 * else is run with executeSql. Without INSERTs nothing is submitted.
 *
 * <p>With {@code --explain} as the first argument nothing is submitted: the statement set's plan
 * is printed instead (the optimized physical plan and the execution plan, as EXPLAIN gives them),
 * so that what the planner made of the script can be checked (labctl render flink --explain).
 */
public final class SqlRunner {

    private static final String TAG = "[labctl-sql-runner] ";

    /** SET 'key' = 'value' | SET key = value (quotes optional, '' escapes a quote). */
    private static final Pattern SET =
            Pattern.compile(
                    "(?is)^SET\\s+(?:'((?:[^']|'')*)'|([^\\s=]+))\\s*=\\s*(?:'((?:[^']|'')*)'|(.*?))\\s*;?\\s*$");

    private SqlRunner() {}

    public static void main(String[] argv) throws Exception {
        boolean explain = argv.length > 0 && argv[0].equals("--explain");
        String[] args = explain ? java.util.Arrays.copyOfRange(argv, 1, argv.length) : argv;
        List<String> stmts = new ArrayList<>();
        for (int i = 0; i < args.length; i++) {
            String s;
            try {
                s = new String(Base64.getMimeDecoder().decode(args[i].trim()), StandardCharsets.UTF_8);
            } catch (IllegalArgumentException e) {
                throw new IllegalArgumentException(
                        "labctl-sql-runner: argument " + (i + 1) + " is not valid base64: " + e.getMessage(), e);
            }
            s = stripTrailingSemicolon(s.trim());
            if (s.isEmpty()) {
                throw new IllegalArgumentException("labctl-sql-runner: statement " + (i + 1) + " is empty");
            }
            stmts.add(s);
        }
        int n = stmts.size();
        System.out.println(TAG + n + " statement(s)");

        // First pass: every SET goes into the configuration the environment is created from, so
        // that job-level options (checkpointing, restart strategy, parallelism, pipeline.name ...)
        // apply to the job whatever their position in the script.
        Configuration conf = new Configuration();
        for (int i = 0; i < n; i++) {
            String s = stmts.get(i);
            if (kind(s).equals("SET")) {
                String[] kv = parseSet(s, i, n);
                conf.setString(kv[0], kv[1]);
            }
        }
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(conf);
        env.configure(conf, Thread.currentThread().getContextClassLoader());
        StreamTableEnvironment tEnv =
                StreamTableEnvironment.create(
                        env, EnvironmentSettings.newInstance().inStreamingMode().withConfiguration(conf).build());

        StatementSet set = tEnv.createStatementSet();
        int inserts = 0;
        for (int i = 0; i < n; i++) {
            String s = stmts.get(i);
            String k = kind(s);
            try {
                switch (k) {
                    case "SET": {
                        String[] kv = parseSet(s, i, n);
                        tEnv.getConfig().set(kv[0], kv[1]);
                        System.out.println(TAG + (i + 1) + "/" + n + " SET " + kv[0] + " = " + kv[1]);
                        break;
                    }
                    case "INSERT":
                        set.addInsertSql(s);
                        inserts++;
                        System.out.println(TAG + (i + 1) + "/" + n + " INSERT queued: " + firstLine(s));
                        break;
                    default: {
                        TableResult r = tEnv.executeSql(s);
                        System.out.println(TAG + (i + 1) + "/" + n + " " + r.getResultKind() + ": " + firstLine(s));
                    }
                }
            } catch (Exception e) {
                throw fail(i, n, s, e);
            }
        }
        if (inserts == 0) {
            System.out.println(TAG + "no INSERT statement, no job submitted");
            return;
        }
        if (explain) {
            System.out.println(set.explain());
            return;
        }
        try {
            TableResult r = set.execute();
            String id = r.getJobClient().map(c -> c.getJobID().toString()).orElse("?");
            System.out.println(TAG + "submitted " + inserts + " INSERT(s) as one job: " + id);
        } catch (Exception e) {
            throw new RuntimeException(
                    "labctl-sql-runner: submitting the " + inserts + " INSERT statement(s) failed: " + rootMessage(e), e);
        }
    }

    private static String kind(String s) {
        String head = stripLeadingComments(s);
        Matcher m = Pattern.compile("^([A-Za-z]+)").matcher(head);
        if (!m.find()) {
            return "OTHER";
        }
        String w = m.group(1).toUpperCase(Locale.ROOT);
        return w.equals("SET") || w.equals("INSERT") ? w : "OTHER";
    }

    private static String[] parseSet(String s, int i, int n) {
        Matcher m = SET.matcher(stripLeadingComments(s));
        if (!m.matches()) {
            throw fail(i, n, s, new IllegalArgumentException("expected SET 'key' = 'value'"));
        }
        String key = m.group(1) != null ? m.group(1).replace("''", "'") : m.group(2);
        String val = m.group(3) != null ? m.group(3).replace("''", "'") : m.group(4);
        return new String[] {key.trim(), val};
    }

    private static RuntimeException fail(int i, int n, String s, Throwable e) {
        return new RuntimeException(
                "labctl-sql-runner: statement " + (i + 1) + "/" + n + " failed [" + firstLine(s) + "]: " + rootMessage(e),
                e);
    }

    private static String rootMessage(Throwable e) {
        StringBuilder sb = new StringBuilder(String.valueOf(e.getMessage()));
        Throwable c = e.getCause();
        Throwable last = e;
        while (c != null && c != last) {
            if (c.getMessage() != null && !sb.toString().contains(c.getMessage())) {
                sb.append(" | caused by: ").append(c.getMessage());
            }
            last = c;
            c = c.getCause();
        }
        return sb.toString();
    }

    private static String firstLine(String s) {
        String l = stripLeadingComments(s);
        int nl = l.indexOf('\n');
        if (nl >= 0) {
            l = l.substring(0, nl);
        }
        l = l.trim();
        return l.length() > 120 ? l.substring(0, 117) + "..." : l;
    }

    private static String stripLeadingComments(String s) {
        String t = s.trim();
        while (true) {
            if (t.startsWith("--")) {
                int nl = t.indexOf('\n');
                t = nl < 0 ? "" : t.substring(nl + 1).trim();
            } else if (t.startsWith("/*")) {
                int end = t.indexOf("*/");
                t = end < 0 ? "" : t.substring(end + 2).trim();
            } else {
                return t;
            }
        }
    }

    private static String stripTrailingSemicolon(String s) {
        String t = s;
        while (t.endsWith(";")) {
            t = t.substring(0, t.length() - 1).trim();
        }
        return t;
    }
}
