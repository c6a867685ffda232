// Tables.java: a Kafka Streams application that materializes Debezium's topics (one per table,
// JSON without schemas: the key {"col": value, ...}, the value Debezium's envelope
// {"before", "after", "source", "op", ...}, a tombstone after each delete) into one KTable per
// topic, each in a RocksDB store (the default persistent store), and serves them through
// interactive queries over HTTP on 127.0.0.1:
//
//   GET /<type>/<key>   the row (Debezium's "after") as JSON, or 404
//   GET /<type>/        the first 100 keys of the table
//   GET /status         {"state": ..., "tables": {type: {"topic", "applied", "next_offset", "entries"}}}
//   POST /stamps?on=1   start (on=0: stop) appending "seq unix-nanos" lines to the stamps file
//                       for every applied row that has a seq column (cmd/changes-bench's latency)
//
// A key is the entity key in changes' form (codecs.KeyKind): one key column gives its value as
// text ("42", a uuid, a text); several give the JSON array of their values as strings
// (["3","creative/3"]). Paths are percent-decoded, so a key with '/' is sent as %2F.
//
//   java -cp 'libs/*:kstreams-tables.jar' Tables STREAMS_PROPERTIES PORT STAMPS_FILE TYPE=TOPIC...
//   java -cp 'libs/*:kstreams-tables.jar' Tables drop BROKERS APPLICATION_ID   (its internal topics and group)
//
// Each table is builder.stream(topic).toTable() with the source serdes below (key JSON -> key
// text; envelope -> "after", null for a delete, which the KTable applies as a delete) and the
// store's serdes (text key, JSON row). Every other setting is in STREAMS_PROPERTIES, written and
// explained by kstreams.sh. The one hook into Streams is a ProcessorWrapper (KIP-1112, the
// processor.wrapper.class setting): after each KTable's processor has put a record into
// its store (where interactive queries see it: they read through the record cache), it counts
// the record, keeps its offset and, when stamping, writes its seq with the time.

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.BufferedWriter;
import java.io.FileInputStream;
import java.io.FileWriter;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.net.InetSocketAddress;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.RemoveMembersFromConsumerGroupOptions;
import org.apache.kafka.common.errors.GroupIdNotFoundException;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StoreQueryParameters;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.TopologyConfig;
import org.apache.kafka.streams.errors.InvalidStateStoreException;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorSupplier;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.ProcessorSupplier;
import org.apache.kafka.streams.processor.api.ProcessorWrapper;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.processor.api.WrappedFixedKeyProcessorSupplier;
import org.apache.kafka.streams.processor.api.WrappedProcessorSupplier;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.QueryableStoreTypes;
import org.apache.kafka.streams.state.ReadOnlyKeyValueStore;
import org.apache.kafka.streams.state.StoreBuilder;

public class Tables {
    static final ObjectMapper JSON = new ObjectMapper();

    /** What the wrapper saw of one topic: records applied and the next offset to apply. */
    static final class Progress {
        final AtomicLong applied = new AtomicLong();
        volatile long nextOffset = 0;
    }

    static final Map<String, Progress> PROGRESS = new ConcurrentHashMap<>(); // by topic
    static final Stamps STAMPS = new Stamps();

    public static void main(String[] args) throws Exception {
        if (args.length == 3 && args[0].equals("drop")) {
            drop(args[1], args[2]);
            return;
        }
        if (args.length < 4) {
            System.err.println("usage: Tables STREAMS_PROPERTIES PORT STAMPS_FILE TYPE=TOPIC...");
            System.exit(2);
        }
        Properties props = new Properties();
        try (InputStream in = new FileInputStream(args[0])) {
            props.load(in);
        }
        int port = Integer.parseInt(args[1]);
        STAMPS.path = args[2];
        Map<String, String> topics = new LinkedHashMap<>(); // type -> topic
        for (int i = 3; i < args.length; i++) {
            String[] kv = args[i].split("=", 2);
            if (kv.length != 2) throw new IllegalArgumentException("not TYPE=TOPIC: " + args[i]);
            topics.put(kv[0], kv[1]);
            PROGRESS.put(kv[1], new Progress());
        }
        props.put(StreamsConfig.PROCESSOR_WRAPPER_CLASS_CONFIG, Applied.class.getName());

        // The wrapper is a topology setting: the builder must be given the config.
        StreamsBuilder builder = new StreamsBuilder(new TopologyConfig(new StreamsConfig(props)));
        Serde<String> sourceKey = Serdes.serdeFrom(Serdes.String().serializer(), new KeyDeserializer());
        Serde<JsonNode> sourceValue = Serdes.serdeFrom(new JsonSerializer(), new AfterDeserializer());
        Serde<JsonNode> row = Serdes.serdeFrom(new JsonSerializer(), new JsonDeserializer());
        // stream(...).toTable(...), not builder.table(...): a source KTable's store takes the
        // source topic's serdes, and the topic holds envelopes, the store rows. A null value
        // (a delete's "after", a tombstone) deletes the key, as in a source KTable.
        topics.forEach((type, topic) -> builder.stream(topic, Consumed.with(sourceKey, sourceValue))
                .toTable(Materialized.<String, JsonNode, KeyValueStore<Bytes, byte[]>>as(type)
                        .withKeySerde(Serdes.String()).withValueSerde(row)));

        KafkaStreams streams = new KafkaStreams(builder.build(props), props);
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("stream thread failed: " + e);
            e.printStackTrace();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        CountDownLatch stopped = new CountDownLatch(1);
        HttpServer http = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 64);
        http.setExecutor(Executors.newFixedThreadPool(4));
        http.createContext("/", ex -> serve(ex, streams, topics));
        ScheduledExecutorService flusher = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "stamps-flush");
            t.setDaemon(true);
            return t;
        });
        flusher.scheduleAtFixedRate(STAMPS::flush, 100, 100, TimeUnit.MILLISECONDS);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            http.stop(0);
            streams.close(Duration.ofSeconds(30));
            STAMPS.set(false);
            stopped.countDown();
        }, "shutdown"));
        streams.setStateListener((now, before) -> {
            System.err.println("kafka streams: " + before + " -> " + now);
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) stopped.countDown();
        });
        http.start();
        streams.start();
        stopped.await();
        if (streams.state() == KafkaStreams.State.ERROR) System.exit(1);
    }

    /** drop deletes an application's internal topics (APP_ID-*) and its consumer group. */
    static void drop(String brokers, String appId) throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        try (Admin admin = Admin.create(p)) {
            var topics = admin.listTopics().names().get().stream().filter(t -> t.startsWith(appId + "-")).sorted().toList();
            if (!topics.isEmpty()) admin.deleteTopics(topics).all().get();
            topics.forEach(t -> System.out.println("deleted topic " + t));
            try {
                // A Streams member does not leave its group when it closes (it would be back
                // after a restart): remove what is left of them first.
                try {
                    admin.removeMembersFromConsumerGroup(appId, new RemoveMembersFromConsumerGroupOptions()).all().get();
                } catch (ExecutionException e) {
                    // no members left, or no group
                }
                admin.deleteConsumerGroups(List.of(appId)).all().get();
                System.out.println("deleted consumer group " + appId);
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof GroupIdNotFoundException)) throw e;
            }
        }
    }

    // ------------------------------------------------------------------ HTTP

    static void serve(HttpExchange ex, KafkaStreams streams, Map<String, String> topics) throws IOException {
        try {
            URI uri = ex.getRequestURI();
            String path = uri.getPath(); // percent-decoded
            if (path.equals("/status")) {
                ObjectNode out = JSON.createObjectNode();
                out.put("state", streams.state().toString());
                ObjectNode tables = out.putObject("tables");
                topics.forEach((type, topic) -> {
                    Progress p = PROGRESS.get(topic);
                    ObjectNode t = tables.putObject(type);
                    t.put("topic", topic);
                    t.put("applied", p.applied.get());
                    t.put("next_offset", p.nextOffset);
                    try {
                        t.put("entries", store(streams, type).approximateNumEntries());
                    } catch (InvalidStateStoreException e) {
                        t.putNull("entries");
                    }
                });
                reply(ex, 200, JSON.writeValueAsBytes(out));
                return;
            }
            if (path.equals("/stamps")) {
                String q = uri.getQuery() == null ? "" : uri.getQuery();
                STAMPS.set(q.contains("on=1"));
                reply(ex, 200, ("{\"stamping\":" + q.contains("on=1") + "}").getBytes(StandardCharsets.UTF_8));
                return;
            }
            int slash = path.indexOf('/', 1);
            String type = slash < 0 ? "" : path.substring(1, slash);
            if (slash < 0 || !topics.containsKey(type)) {
                reply(ex, 404, "{\"error\":\"no such path\"}".getBytes(StandardCharsets.UTF_8));
                return;
            }
            String key = path.substring(slash + 1);
            JsonNode row;
            try {
                if (key.isEmpty()) { // GET /<type>/: the first keys, in the store's (byte) order
                    ArrayNode keys = JSON.createArrayNode();
                    try (var it = store(streams, type).all()) {
                        for (int i = 0; i < 100 && it.hasNext(); i++) keys.add(it.next().key);
                    }
                    reply(ex, 200, JSON.writeValueAsBytes(keys));
                    return;
                }
                row = store(streams, type).get(key);
            } catch (InvalidStateStoreException e) { // starting, rebalancing or restoring
                reply(ex, 503, JSON.writeValueAsBytes(JSON.createObjectNode().put("error", e.getMessage())));
                return;
            }
            if (row == null) {
                reply(ex, 404, "{\"error\":\"not found\"}".getBytes(StandardCharsets.UTF_8));
                return;
            }
            reply(ex, 200, JSON.writeValueAsBytes(row));
        } catch (RuntimeException e) {
            reply(ex, 500, JSON.writeValueAsBytes(JSON.createObjectNode().put("error", e.toString())));
        }
    }

    static ReadOnlyKeyValueStore<String, JsonNode> store(KafkaStreams streams, String type) {
        return streams.store(StoreQueryParameters.fromNameAndType(type, QueryableStoreTypes.<String, JsonNode>keyValueStore()));
    }

    static void reply(HttpExchange ex, int code, byte[] body) throws IOException {
        ex.getResponseHeaders().set("Content-Type", "application/json");
        ex.sendResponseHeaders(code, body.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(body);
        }
    }

    // ------------------------------------------------------------------ serdes

    /** Debezium's key {"col": value, ...} -> the entity key in changes' form. */
    public static final class KeyDeserializer implements Deserializer<String> {
        @Override
        public String deserialize(String topic, byte[] data) {
            if (data == null) return null;
            try {
                return entityKey(JSON.readTree(data));
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }
    }

    static String entityKey(JsonNode key) throws IOException {
        if (key.size() == 1) return key.elements().next().asText();
        ArrayNode parts = JSON.createArrayNode();
        for (Iterator<JsonNode> it = key.elements(); it.hasNext(); ) parts.add(it.next().asText());
        return JSON.writeValueAsString(parts);
    }

    /** Debezium's envelope -> its "after" (null for a delete and for a tombstone). */
    public static final class AfterDeserializer implements Deserializer<JsonNode> {
        @Override
        public JsonNode deserialize(String topic, byte[] data) {
            if (data == null) return null;
            try {
                JsonNode after = JSON.readTree(data).get("after");
                return after == null || after.isNull() ? null : after;
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }
    }

    public static final class JsonDeserializer implements Deserializer<JsonNode> {
        @Override
        public JsonNode deserialize(String topic, byte[] data) {
            if (data == null) return null;
            try {
                return JSON.readTree(data);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }
    }

    public static final class JsonSerializer implements Serializer<JsonNode> {
        @Override
        public byte[] serialize(String topic, JsonNode data) {
            if (data == null) return null;
            try {
                return JSON.writeValueAsBytes(data);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }
    }

    // ------------------------------------------------------------------ the hook

    /**
     * Applied wraps every processor of the topology (here: the KTable source processors only):
     * after the processor has applied a record to its store, it counts it, keeps its offset and
     * stamps its seq.
     */
    public static final class Applied implements ProcessorWrapper {
        @Override
        public <KIn, VIn, KOut, VOut> WrappedProcessorSupplier<KIn, VIn, KOut, VOut> wrapProcessorSupplier(
                String name, ProcessorSupplier<KIn, VIn, KOut, VOut> inner) {
            return new WrappedProcessorSupplier<>() {
                @Override
                public Set<StoreBuilder<?>> stores() {
                    return inner.stores();
                }

                @Override
                public Processor<KIn, VIn, KOut, VOut> get() {
                    Processor<KIn, VIn, KOut, VOut> p = inner.get();
                    return new Processor<>() {
                        ProcessorContext<KOut, VOut> ctx;

                        @Override
                        public void init(ProcessorContext<KOut, VOut> context) {
                            ctx = context;
                            p.init(context);
                        }

                        @Override
                        public void process(Record<KIn, VIn> record) {
                            p.process(record);
                            long at = STAMPS.on ? nanosNow() : 0;
                            RecordMetadata m = ctx.recordMetadata().orElse(null);
                            if (m == null) return;
                            Progress pr = PROGRESS.get(m.topic());
                            if (pr != null) {
                                pr.applied.incrementAndGet();
                                pr.nextOffset = m.offset() + 1;
                            }
                            if (at != 0 && record.value() instanceof JsonNode row) {
                                JsonNode seq = row.get("seq");
                                if (seq != null && seq.canConvertToLong()) STAMPS.add(seq.asLong(), at);
                            }
                        }

                        @Override
                        public void close() {
                            p.close();
                        }
                    };
                }
            };
        }

        @Override
        public <KIn, VIn, VOut> WrappedFixedKeyProcessorSupplier<KIn, VIn, VOut> wrapFixedKeyProcessorSupplier(
                String name, FixedKeyProcessorSupplier<KIn, VIn, VOut> inner) {
            return ProcessorWrapper.asWrappedFixedKey(inner);
        }
    }

    static long nanosNow() {
        Instant t = Instant.now(); // CLOCK_REALTIME, microseconds on Linux: the bench's clock
        return t.getEpochSecond() * 1_000_000_000L + t.getNano();
    }

    /** The stamps file: "seq unix-nanos" lines, flushed every 100 ms. */
    static final class Stamps {
        String path;
        volatile boolean on;
        private BufferedWriter out;

        synchronized void set(boolean enable) {
            try {
                if (enable && out == null) out = new BufferedWriter(new FileWriter(path, true), 1 << 16);
                if (!enable && out != null) {
                    out.close();
                    out = null;
                }
                on = enable;
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }

        synchronized void add(long seq, long at) {
            if (out == null) return;
            try {
                out.write(Long.toString(seq));
                out.write(' ');
                out.write(Long.toString(at));
                out.write('\n');
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }

        synchronized void flush() {
            try {
                if (out != null) out.flush();
            } catch (IOException e) {
                System.err.println("stamps: " + e);
            }
        }
    }
}
