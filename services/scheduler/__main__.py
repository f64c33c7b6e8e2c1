"""python -m mallard.services.scheduler"""
import sys

from mallard.runtime.service import main
from mallard.services.scheduler.config import SchedulerSettings
from mallard.services.scheduler.bootstrap import bootstrap

SUMMARY = """\
mallard scheduler: turns the replication config's cron schedules into resnapshot
requests on the control topic, once per fire (deterministic ids '<schedule>@<fire time>'),
recovering its last fires from Kafka. Run several: one publishes (it holds the control
topic's partition in the consumer group), the others stand by. A fire missed while no
scheduler ran is run once on start (catch_up=once) or skipped (catch_up=skip)."""

if __name__ == "__main__":
    sys.exit(main("python -m mallard.services.scheduler", SUMMARY, SchedulerSettings, bootstrap))
