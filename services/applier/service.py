from mallard.idle import KafkaService


class ApplierService(KafkaService):
    name = "applier"

    def state(self) -> dict:
        return {**super().state(), "duckdb_path": self.settings.duckdb_path}
