"""Kafka adapters (confluent-kafka): producers keyed by meter id with Kafka's Java partitioner."""
