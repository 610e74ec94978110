package peers;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.atomic.LongAdder;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * One raw event in, one record per tier out: the version check per
 * (entity_type, entity_id) against the state store, then the projections.
 * Records it cannot route throw {@link Rejected}; the processing exception
 * handler logs them and sends them to the dead-letter topic.
 */
final class TierRouter implements Processor<String, byte[], String, byte[]> {
    static final String STORE = "entity-versions";
    static final LongAdder ROUTED = new LongAdder();
    static final LongAdder SKIPPED = new LongAdder();
    static final LongAdder GAPS = new LongAdder();

    private static final ObjectMapper JSON = new ObjectMapper();

    /** A record that is not a routable event; the message is a reason code, never a value. */
    static final class Rejected extends RuntimeException {
        Rejected(String reason) {
            super(reason, null, false, false);
        }
    }

    private final Classification classes;
    private ProcessorContext<String, byte[]> context;
    private KeyValueStore<String, Long> versions;

    TierRouter(Classification classes) {
        this.classes = classes;
    }

    @Override
    public void init(ProcessorContext<String, byte[]> context) {
        this.context = context;
        this.versions = context.getStateStore(STORE);
    }

    @Override
    public void process(Record<String, byte[]> in) {
        JsonNode event;
        try {
            event = JSON.readTree(in.value());
        } catch (IOException | RuntimeException e) {
            throw new Rejected("malformed_json"); // Jackson's message may quote the payload
        }
        if (event == null || !event.isObject()) throw new Rejected("malformed_json");
        Classification.EventType type = classes.eventType(event.path("event_type").textValue());
        if (type == null) throw new Rejected("unknown_event_type");
        Classification.Shape envelope = type.versions().get(event.path("schema_version").asInt());
        if (envelope == null) throw new Rejected("unknown_schema_version");
        String entityType = event.path("entity_type").textValue();
        String entityId = event.path("entity_id").textValue();
        JsonNode v = event.path("entity_version");
        if (entityType == null || entityId == null || !v.canConvertToExactIntegral() || v.asLong() < 1) {
            throw new Rejected("invalid_envelope");
        }
        long version = v.asLong();

        // Order per entity: first sight or last + 1 accepted; duplicates and
        // stale versions skipped; a gap goes out with x-version-gap.
        String stateKey = entityType + "/" + entityId;
        Long last = versions.get(stateKey);
        if (last != null && version <= last) {
            SKIPPED.increment();
            return;
        }
        versions.put(stateKey, version);
        long missing = last == null ? 0 : version - last - 1;
        if (missing > 0) GAPS.increment();

        for (Classification.Tier tier : type.tiers()) {
            byte[] value;
            try {
                value = tier == Classification.Tier.RESTRICTED
                    ? in.value() // restricted sees everything
                    : JSON.writeValueAsBytes(Classification.project(event, envelope, tier));
            } catch (JsonProcessingException e) {
                throw new IllegalStateException(e);
            }
            RecordHeaders headers = new RecordHeaders();
            headers.add("event_type", bytes(event.path("event_type").textValue()));
            headers.add("entity_type", bytes(entityType));
            headers.add("entity_version", bytes(Long.toString(version)));
            headers.add("privacy_tier", bytes(tier.name().toLowerCase()));
            if (missing > 0) headers.add("x-version-gap", bytes(Long.toString(missing)));
            context.forward(new Record<>(entityId, value, in.timestamp(), headers), tier.name().toLowerCase());
        }
        ROUTED.increment();
    }

    private static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }
}
