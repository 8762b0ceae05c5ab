"""A device client for the last-will test, run as a separate process and killed with -9.

Usage: python tests/integration/will_client.py HOST PORT USERNAME STATUS_TOPIC KEEPALIVE_S
The password comes from the environment variable EPIC_MQTT_PASSWORD. Writes "ready" on
stdout once its retained "online" is acknowledged, then sleeps until killed.
"""

from __future__ import annotations

import os
import sys
import time

from epic.mqtt import MqttSettings, SessionClient
from epic.wire import STATUS_ONLINE


def main(argv: list[str]) -> int:
    host, port, username, status_topic, keepalive_s = argv
    settings = MqttSettings(host, int(port), username, username,
                            os.environ["EPIC_MQTT_PASSWORD"], keepalive_s=int(keepalive_s))
    client = SessionClient(settings, status_topic=status_topic).connect(timeout_s=10)
    client.publish(status_topic, STATUS_ONLINE, retain=True).wait_for_publish(10)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        time.sleep(60)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
