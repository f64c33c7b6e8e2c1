from mallard.idle import KafkaService


class SchedulerService(KafkaService):
    name = "scheduler"
    owned_topics = ("control_topic",)
