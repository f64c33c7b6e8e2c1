"""The local stack: real Postgres, Tansu (Kafka API), embedded Debezium and the
mallard services as background processes, for machines without Docker."""
