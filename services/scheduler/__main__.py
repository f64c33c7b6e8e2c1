"""python -m services.scheduler"""
import sys

from mallard.service import main
from services.scheduler.config import SchedulerSettings
from services.scheduler.service import SchedulerService

SUMMARY = """\
mallard scheduler: turns the replication config's cron schedules into resnapshot
requests on the control topic, once per fire (deterministic ids), recovering its
last fires from Kafka. Today it reaches Kafka, creates the control topic and
waits; schedules arrive with the replication-config issue."""

if __name__ == "__main__":
    sys.exit(main("python -m services.scheduler", SUMMARY, SchedulerSettings, SchedulerService))
