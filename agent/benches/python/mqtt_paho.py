"""paho-mqtt through a broker for agent/benches/mqtt.rs: one client publishes COUNT
messages of PAYLOAD_BYTES at QOS as fast as it may (at most INFLIGHT unacknowledged),
another receives them; prints the seconds from the first publish to the last message
received, and how many were received.

    python mqtt_paho.py PORT QOS COUNT PAYLOAD_BYTES INFLIGHT
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt


def main():
    port, qos, count, size, inflight = map(int, sys.argv[1:6])
    topic = f"bench/paho/{qos}/{time.time_ns()}"
    received = 0
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_client, _userdata, _message):
        nonlocal received
        received += 1
        if received == count:
            done.set()

    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{topic}-sub")
    subscriber.on_message = on_message
    subscriber.on_subscribe = lambda *_: subscribed.set()
    subscriber.connect("127.0.0.1", port)
    subscriber.loop_start()
    subscriber.subscribe(topic, qos)
    if not subscribed.wait(10):
        sys.exit("not subscribed")

    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{topic}-pub")
    publisher.max_inflight_messages_set(inflight)
    connected = threading.Event()
    publisher.on_connect = lambda *_: connected.set()
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    if not connected.wait(10):
        sys.exit("not connected")

    payload = b"m" * size
    started = time.perf_counter()
    for _ in range(count):
        publisher.publish(topic, payload, qos)
    done.wait(120)
    elapsed = time.perf_counter() - started
    print(f"{elapsed:.6f} {received}", flush=True)
    publisher.loop_stop()
    subscriber.loop_stop()
    publisher.disconnect()
    subscriber.disconnect()


if __name__ == "__main__":
    main()
