package peers;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The classification file written by benches/peers/classify.py from our Avro
 * schemas: per event type and schema version, each field's tier; and the
 * projection of an event onto a tier.
 */
final class Classification {
    enum Tier { PUBLIC, INTERNAL, RESTRICTED }

    /** A field's tier and, where its type holds records, their shape. */
    record Field(Tier tier, Shape shape) {}

    /** Record fields, or the shape of an array's items, or of a map's values. */
    record Shape(Map<String, Field> fields, Shape items, Shape values) {}

    /** The tiers an event type reaches, and its envelope's fields per schema version. */
    record EventType(List<Tier> tiers, Map<Integer, Shape> versions) {}

    private final Map<String, EventType> eventTypes = new HashMap<>();

    static Classification load(Path file) throws IOException {
        JsonNode root = new ObjectMapper().readTree(file.toFile());
        Classification c = new Classification();
        root.get("event_types").properties().forEach(e -> {
            List<Tier> tiers = new ArrayList<>();
            e.getValue().get("tiers").forEach(t -> tiers.add(tier(t.asText())));
            Map<Integer, Shape> versions = new HashMap<>();
            e.getValue().get("versions").properties().forEach(v ->
                versions.put(Integer.valueOf(v.getKey()), new Shape(fields(v.getValue()), null, null)));
            c.eventTypes.put(e.getKey(), new EventType(List.copyOf(tiers), versions));
        });
        return c;
    }

    EventType eventType(String name) {
        return name == null ? null : eventTypes.get(name);
    }

    int size() {
        return eventTypes.size();
    }

    private static Tier tier(String name) {
        return Tier.valueOf(name.toUpperCase());
    }

    private static Map<String, Field> fields(JsonNode record) {
        Map<String, Field> out = new HashMap<>();
        record.properties().forEach(f -> out.put(f.getKey(), new Field(tier(f.getValue().get("tier").asText()), shape(f.getValue()))));
        return out;
    }

    private static Shape shape(JsonNode n) {
        if (n.has("record")) return new Shape(fields(n.get("record")), null, null);
        if (n.has("array")) return new Shape(null, shape(n.get("array")), null);
        if (n.has("map")) return new Shape(null, null, shape(n.get("map")));
        return null;
    }

    /**
     * The value as tier {@code tier} may see it: fields above the tier removed
     * (with everything inside them), fields the schema does not know removed
     * (unlabelled = restricted).
     */
    static JsonNode project(JsonNode value, Shape shape, Tier tier) {
        if (shape == null || value == null || value.isNull()) return value;
        if (shape.fields() != null && value.isObject()) {
            ObjectNode out = JsonNodeFactory.instance.objectNode();
            for (Map.Entry<String, JsonNode> e : value.properties()) {
                Field f = shape.fields().get(e.getKey());
                if (f != null && f.tier().compareTo(tier) <= 0) {
                    out.set(e.getKey(), project(e.getValue(), f.shape(), tier));
                }
            }
            return out;
        }
        if (shape.items() != null && value.isArray()) {
            ArrayNode out = JsonNodeFactory.instance.arrayNode(value.size());
            for (JsonNode item : value) out.add(project(item, shape.items(), tier));
            return out;
        }
        if (shape.values() != null && value.isObject()) {
            ObjectNode out = JsonNodeFactory.instance.objectNode();
            for (Map.Entry<String, JsonNode> e : value.properties()) {
                out.set(e.getKey(), project(e.getValue(), shape.values(), tier));
            }
            return out;
        }
        return value;
    }
}
