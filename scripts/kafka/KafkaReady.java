// Waits until a Kafka broker really serves clients, then warms it up for the test suite.
//
//   java -cp '<kafka lib>/*' KafkaReady.java BOOTSTRAP TIMEOUT_SECONDS
//
// Run by scripts/services.sh (Java's single-file source launcher, no build step). It checks, with
// the real Java client: (1) cluster metadata lists at least one broker; (2) a group coordinator
// answers for every partition of __consumer_offsets; (3) a transactional producer can
// initTransactions / commit on every partition of __transaction_state. (2) and (3) create and
// load those internal topics, which otherwise costs the first clients of the test suite seconds
// of "coordinator not available / load in progress" retries. Exit 0 when all pass before the
// deadline, 1 otherwise, with the last error on stderr.
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.utils.Utils;

public class KafkaReady {
    public static void main(String[] args) throws Exception {
        String bootstrap = args.length > 0 ? args[0] : "127.0.0.1:19092";
        long timeoutMs = (args.length > 1 ? Long.parseLong(args[1]) : 120) * 1000L;
        long deadline = System.currentTimeMillis() + timeoutMs;
        String step = "metadata";
        Exception last = null;
        while (System.currentTimeMillis() < deadline) {
            try {
                step = "metadata";
                checkMetadataAndGroups(bootstrap, remaining(deadline));
                step = "transactions";
                checkTransactions(bootstrap, remaining(deadline));
                System.err.println("[services] kafka: " + bootstrap + " serves metadata, groups and transactions");
                return;
            } catch (Exception e) {
                last = e;
                TimeUnit.MILLISECONDS.sleep(500);
            }
        }
        System.err.println("[services] kafka: broker at " + bootstrap + " not ready within "
                + timeoutMs / 1000 + "s (step: " + step + "): " + last);
        System.exit(1);
    }

    // milliseconds left before the deadline, at most 15 s for one call, at least 1
    static long remaining(long deadline) {
        return Math.max(1, Math.min(15000, deadline - System.currentTimeMillis()));
    }

    static Admin admin(String bootstrap, long timeoutMs) {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, (int) Math.max(1000, timeoutMs));
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, (int) Math.max(1000, timeoutMs));
        return Admin.create(props);
    }

    static void checkMetadataAndGroups(String bootstrap, long timeoutMs) throws Exception {
        try (Admin admin = admin(bootstrap, timeoutMs)) {
            int brokers = admin.describeCluster().nodes().get(timeoutMs, TimeUnit.MILLISECONDS).size();
            if (brokers < 1) {
                throw new IllegalStateException("no broker in the cluster metadata");
            }
            // the first lookup creates __consumer_offsets; then one group per partition of it
            admin.listConsumerGroupOffsets("metrify-services-ready")
                    .partitionsToOffsetAndMetadata().get(timeoutMs, TimeUnit.MILLISECONDS);
            int partitions = partitionCount(admin, "__consumer_offsets", timeoutMs);
            for (String group : idsCoveringPartitions("metrify-services-ready-", partitions)) {
                admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata()
                        .get(timeoutMs, TimeUnit.MILLISECONDS);
            }
        }
    }

    static void checkTransactions(String bootstrap, long timeoutMs) throws Exception {
        initTransaction(bootstrap, "metrify-services-ready", timeoutMs); // creates __transaction_state
        int partitions;
        try (Admin admin = admin(bootstrap, timeoutMs)) {
            partitions = partitionCount(admin, "__transaction_state", timeoutMs);
        }
        for (String id : idsCoveringPartitions("metrify-services-ready-", partitions)) {
            initTransaction(bootstrap, id, timeoutMs);
        }
    }

    static void initTransaction(String bootstrap, String transactionalId, long timeoutMs) {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, transactionalId);
        props.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, timeoutMs);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            producer.initTransactions();
            producer.beginTransaction();
            producer.commitTransaction();
            producer.close(Duration.ofSeconds(5));
        }
    }

    static int partitionCount(Admin admin, String topic, long timeoutMs) throws Exception {
        return admin.describeTopics(List.of(topic)).allTopicNames().get(timeoutMs, TimeUnit.MILLISECONDS)
                .get(topic).partitions().size();
    }

    // Ids whose coordinator partitions (abs(hashCode) % partitions, as the broker maps
    // transactional ids and group ids) cover every partition of the internal topic.
    static List<String> idsCoveringPartitions(String prefix, int partitions) {
        Set<Integer> covered = new TreeSet<>();
        List<String> ids = new ArrayList<>();
        for (int n = 0; covered.size() < partitions && n < 100_000; n++) {
            String id = prefix + n;
            if (covered.add(Utils.abs(id.hashCode()) % partitions)) {
                ids.add(id);
            }
        }
        return ids;
    }
}
