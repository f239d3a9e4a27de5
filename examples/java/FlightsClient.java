import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.StringJoiner;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * What the business application does to use the model: ask the model server about one flight, over the
 * Open Inference Protocol v2 and over plain JSON, and print the answer with the model version that gave it.
 *
 * <p>JDK 17 only (java.net.http); a real application would use its usual JSON library instead of the
 * few string helpers at the bottom.
 *
 * <pre>
 *   javac -d out examples/java/FlightsClient.java
 *   java -cp out FlightsClient [base-url] [model-name]      # default http://127.0.0.1:8000 flights_delay
 * </pre>
 * With bearer-token auth on the server, set SERVING_AUTH_TOKEN in the environment.
 */
public final class FlightsClient {

    /** One flight as the serving API expects it: every feature of the model, by name (null when unknown). */
    static Map<String, Object> exampleFlight() {
        Map<String, Object> f = new LinkedHashMap<>();
        f.put("distance", 2475.0);
        f.put("sched_dep_hour", 17.0);
        f.put("temp", 80.1);
        f.put("humid", 60.0);
        f.put("wind_speed", 10.4);
        f.put("precip", 0.0);
        f.put("visib", 10.0);
        f.put("plane_year", 2005.0);
        f.put("seats", 180.0);
        f.put("dest_lat", 33.94);
        f.put("dest_lon", -118.41);
        f.put("dest_alt", 126.0);
        f.put("carrier", "AA");
        f.put("origin", "JFK");
        f.put("dest", "LAX");
        return f;
    }

    private final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
    private final String base;
    private final String token = System.getenv("SERVING_AUTH_TOKEN");

    FlightsClient(String base) {
        this.base = base.endsWith("/") ? base.substring(0, base.length() - 1) : base;
    }

    /** POST /v2/models/{name}/infer with one tensor per feature: FP32 for numbers, BYTES for categories. */
    String infer(String model, Map<String, Object> flight) throws IOException, InterruptedException {
        StringJoiner inputs = new StringJoiner(",", "[", "]");
        for (Map.Entry<String, Object> e : flight.entrySet()) {
            boolean text = e.getValue() instanceof String;
            inputs.add("{\"name\":" + quote(e.getKey()) + ",\"shape\":[1],\"datatype\":\"" + (text ? "BYTES" : "FP32")
                    + "\",\"data\":[" + json(e.getValue()) + "]}");
        }
        HttpResponse<String> resp = post("/v2/models/" + model + "/infer", "{\"id\":\"java-1\",\"inputs\":" + inputs + "}");
        String probability = find(resp.body(), "\"name\":\"probability\"[^}]*\"data\":\\[([^\\]]*)\\]");
        return String.format(Locale.ROOT, "OIP  POST /v2/models/%s/infer -> HTTP %d, model_version %s "
                + "(X-Model-Version %s): probability %s", model, resp.statusCode(), find(resp.body(),
                "\"model_version\":\"([^\"]*)\""), header(resp), probability);
    }

    /** POST /predict with {"records": [flight]}: the simplest way in. */
    String predict(Map<String, Object> flight) throws IOException, InterruptedException {
        StringJoiner fields = new StringJoiner(",", "{", "}");
        flight.forEach((k, v) -> fields.add(quote(k) + ":" + json(v)));
        HttpResponse<String> resp = post("/predict", "{\"records\":[" + fields + "]}");
        return String.format(Locale.ROOT, "JSON POST /predict -> HTTP %d, model_version %s (X-Model-Version %s): "
                + "probability %s, label %s", resp.statusCode(), find(resp.body(), "\"model_version\":\"([^\"]*)\""),
                header(resp), find(resp.body(), "\"probability\":([-0-9.eE+]+)"), find(resp.body(), "\"label\":(\\d)"));
    }

    private HttpResponse<String> post(String path, String body) throws IOException, InterruptedException {
        HttpRequest.Builder req = HttpRequest.newBuilder(URI.create(base + path))
                .timeout(Duration.ofSeconds(10))
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(body));
        if (token != null && !token.isEmpty()) {
            req.header("Authorization", "Bearer " + token);
        }
        HttpResponse<String> resp = http.send(req.build(), HttpResponse.BodyHandlers.ofString());
        if (resp.statusCode() != 200) {
            throw new IOException("POST " + path + " -> HTTP " + resp.statusCode() + ": " + resp.body());
        }
        return resp;
    }

    private static String header(HttpResponse<String> resp) {
        return resp.headers().firstValue("x-model-version").orElse("?");
    }

    private static String find(String text, String regex) {
        Matcher m = Pattern.compile(regex).matcher(text);
        return m.find() ? m.group(1) : "?";
    }

    private static String json(Object v) {
        if (v == null) {
            return "null";
        }
        return v instanceof String s ? quote(s) : String.format(Locale.ROOT, "%s", v);
    }

    private static String quote(String s) {
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }

    public static void main(String[] args) throws Exception {
        String base = args.length > 0 ? args[0] : "http://127.0.0.1:8000";
        String model = args.length > 1 ? args[1] : "flights_delay";
        FlightsClient client = new FlightsClient(base);
        Map<String, Object> flight = exampleFlight();
        System.out.println("flight " + flight.get("carrier") + " " + flight.get("origin") + "->" + flight.get("dest")
                + " at " + flight.get("sched_dep_hour") + "h");
        try {
            System.out.println(client.infer(model, flight));
            System.out.println(client.predict(flight));
        } catch (IOException e) {
            System.err.println("the model server did not answer as expected: " + e.getMessage());
            System.exit(1);
        }
    }
}
