// Topics.java: the few Kafka topic operations that debezium.sh needs, run as a single-file
// source program against the Connect classpath (kafka-clients): java -cp 'libs/*' Topics.java ...
//
//   list   BROKERS PREFIX   print "topic<TAB>messages" (sum of end minus start offsets) for topics starting with PREFIX
//   delete BROKERS PREFIX   delete the topics starting with PREFIX
import java.util.*;
import java.util.stream.*;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.common.TopicPartition;

public class Topics {
    public static void main(String[] args) throws Exception {
        if (args.length != 3 || args[2].isEmpty()) {
            System.err.println("usage: Topics list|delete BROKERS PREFIX");
            System.exit(2);
        }
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
        try (Admin admin = Admin.create(p)) {
            List<String> topics = admin.listTopics().names().get().stream()
                    .filter(t -> t.startsWith(args[2])).sorted().collect(Collectors.toList());
            switch (args[0]) {
                case "list": {
                    if (topics.isEmpty()) return;
                    Map<TopicPartition, OffsetSpec> earliest = new HashMap<>(), latest = new HashMap<>();
                    for (TopicDescription d : admin.describeTopics(topics).allTopicNames().get().values()) {
                        d.partitions().forEach(tp -> {
                            TopicPartition k = new TopicPartition(d.name(), tp.partition());
                            earliest.put(k, OffsetSpec.earliest());
                            latest.put(k, OffsetSpec.latest());
                        });
                    }
                    var lo = admin.listOffsets(earliest).all().get();
                    var hi = admin.listOffsets(latest).all().get();
                    Map<String, Long> n = new TreeMap<>();
                    hi.forEach((tp, r) -> n.merge(tp.topic(), r.offset() - lo.get(tp).offset(), Long::sum));
                    n.forEach((t, c) -> System.out.println(t + "\t" + c));
                    break;
                }
                case "delete":
                    if (!topics.isEmpty()) admin.deleteTopics(topics).all().get();
                    topics.forEach(t -> System.out.println("deleted topic " + t));
                    break;
                default:
                    System.err.println("unknown command " + args[0]);
                    System.exit(2);
            }
        }
    }
}
