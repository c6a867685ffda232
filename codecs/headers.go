package codecs

// Record headers: the names of the Kafka record headers the platform
// writes. They are metadata only: every record's value holds the whole
// Event or State, and a consumer that ignores the headers loses nothing.
const (
	// HeaderEntityType is the entity type of a history record's event, so
	// that consumers can route it without decoding the value.
	HeaderEntityType = "changes-entity-type"
	// HeaderOp is the operation of a history record's event (Op); with the
	// record key "type/id" the router routes on it without decoding.
	HeaderOp = "changes-op"
	// HeaderPosition is the text form of a history record's Position.
	HeaderPosition = "changes-position"
	// HeaderCommitTime is the event's commit time, RFC 3339 with
	// nanoseconds; the record timestamp is the same time in milliseconds.
	HeaderCommitTime = "changes-commit-time"
	// HeaderCaptureTime is when the capture decoded the change, RFC 3339
	// with nanoseconds.
	HeaderCaptureTime = "changes-capture-time"

	// HeaderDeadLetterReason is why the processors sent a record to the
	// dead-letter topic, in words.
	HeaderDeadLetterReason = "changes-deadletter-reason"
	// HeaderSourceTopic is the topic a dead-lettered record was read from.
	HeaderSourceTopic = "changes-source-topic"
	// HeaderSourcePartition is its partition, in decimal.
	HeaderSourcePartition = "changes-source-partition"
	// HeaderSourceOffset is its offset there, in decimal.
	HeaderSourceOffset = "changes-source-offset"
)
