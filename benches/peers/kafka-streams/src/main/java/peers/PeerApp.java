package peers;

import java.nio.file.Path;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.LogAndContinueExceptionHandler;
import org.apache.kafka.streams.errors.LogAndContinueProcessingExceptionHandler;
import org.apache.kafka.streams.state.Stores;

/**
 * privacy-router's job written as a Kafka Streams application: raw JSON events
 * in, one projection per privacy tier out, in order per entity.
 *
 * <pre>
 * source(input) -> route [store entity-versions] -> sink public / internal / restricted
 *                                                  \-> dead-letter topic (processing exception handler)
 * </pre>
 */
public final class PeerApp {
    private static final Map<String, String> DEFAULTS = Map.ofEntries(
        Map.entry("bootstrap", "localhost:9092"),
        Map.entry("application-id", "peer-kafka-streams"),
        Map.entry("input", "events.raw"),
        Map.entry("public", "events.public"),
        Map.entry("internal", "events.internal"),
        Map.entry("restricted", "events.restricted"),
        Map.entry("dead-letter", "events.dlq"),
        Map.entry("guarantee", StreamsConfig.EXACTLY_ONCE_V2),
        Map.entry("classification", "target/peers/classification.json"),
        Map.entry("state-dir", "target/peers/kafka-streams-state"),
        Map.entry("threads", "1"));

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = parse(argv);
        Classification classes = Classification.load(Path.of(args.get("classification")));

        Topology topology = new Topology();
        topology.addSource("raw", Serdes.String().deserializer(), Serdes.ByteArray().deserializer(), args.get("input"));
        topology.addProcessor("route", () -> new TierRouter(classes), "raw");
        topology.addStateStore(
            Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(TierRouter.STORE), Serdes.String(), Serdes.Long()),
            "route");
        for (String tier : new String[] {"public", "internal", "restricted"}) {
            topology.addSink(tier, args.get(tier), Serdes.String().serializer(), Serdes.ByteArray().serializer(), "route");
        }

        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, args.get("application-id"));
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("bootstrap"));
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, args.get("guarantee"));
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(args.get("threads")));
        p.put(StreamsConfig.STATE_DIR_CONFIG, args.get("state-dir"));
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        p.put(StreamsConfig.DESERIALIZATION_EXCEPTION_HANDLER_CLASS_CONFIG, LogAndContinueExceptionHandler.class);
        p.put(StreamsConfig.PROCESSING_EXCEPTION_HANDLER_CLASS_CONFIG, LogAndContinueProcessingExceptionHandler.class);
        p.put(StreamsConfig.ERRORS_DEAD_LETTER_QUEUE_TOPIC_NAME_CONFIG, args.get("dead-letter"));

        KafkaStreams streams = new KafkaStreams(topology, p);
        CountDownLatch stopped = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) stopped.countDown();
        });
        // SIGTERM / SIGINT: commit, leave the group, then exit 0.
        AtomicBoolean signalled = new AtomicBoolean();
        Thread onSignal = new Thread(() -> {
            signalled.set(true);
            streams.close(Duration.ofSeconds(30));
            summary();
        });
        Runtime.getRuntime().addShutdownHook(onSignal);
        System.err.printf("kafka-streams peer: %s %s -> %s, %s, %s (%s, %d event types, %s thread(s))%n",
            args.get("application-id"), args.get("input"), args.get("public"), args.get("internal"),
            args.get("restricted"), args.get("guarantee"), classes.size(), args.get("threads"));
        streams.start();
        stopped.await();
        if (signalled.get()) return; // the hook closes and reports
        // Stopped by itself (a fatal error): report and exit non-zero.
        Runtime.getRuntime().removeShutdownHook(onSignal);
        streams.close(Duration.ofSeconds(30));
        summary();
        System.exit(1);
    }

    private static void summary() {
        System.err.printf("kafka-streams peer: routed %d, skipped (duplicate or stale) %d, gaps %d%n",
            TierRouter.ROUTED.sum(), TierRouter.SKIPPED.sum(), TierRouter.GAPS.sum());
    }

    private static Map<String, String> parse(String[] argv) {
        Map<String, String> args = new HashMap<>(DEFAULTS);
        for (int i = 0; i < argv.length; i++) {
            String name = argv[i].startsWith("--") ? argv[i].substring(2) : null;
            if (name == null || !DEFAULTS.containsKey(name) || i + 1 == argv.length) {
                System.err.println("usage: peer-kafka-streams " + String.join(" ",
                    DEFAULTS.keySet().stream().sorted().map(k -> "[--" + k + " " + DEFAULTS.get(k) + "]").toList()));
                System.exit(2);
            }
            args.put(name, argv[++i]);
        }
        String g = args.get("guarantee");
        if (!g.equals(StreamsConfig.EXACTLY_ONCE_V2) && !g.equals(StreamsConfig.AT_LEAST_ONCE)) {
            System.err.println("--guarantee must be exactly_once_v2 or at_least_once");
            System.exit(2);
        }
        return args;
    }
}
