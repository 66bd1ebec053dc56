"""pyzmq REQ/REP round trips for agent/benches/peer.rs: what the Python Motey used.

    python zmq_reqrep.py serve REPLY_BYTES        binds REP on loopback, prints its port
    python zmq_reqrep.py client PORT REQUEST_BYTES
        reads "N" lines on stdin; for each, makes N sequential round trips and prints
        their latencies in nanoseconds on one line
"""

import sys
import time

import zmq


def serve(reply_bytes):
    context = zmq.Context()
    socket = context.socket(zmq.REP)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    reply = b"r" * reply_bytes
    while True:
        socket.recv()
        socket.send(reply)


def client(port, request_bytes):
    context = zmq.Context()
    socket = context.socket(zmq.REQ)
    socket.connect(f"tcp://127.0.0.1:{port}")
    request = b"q" * request_bytes
    clock = time.perf_counter_ns
    for line in sys.stdin:
        count = int(line)
        latencies = []
        for _ in range(count):
            begin = clock()
            socket.send(request)
            socket.recv()
            latencies.append(clock() - begin)
        print(" ".join(map(str, latencies)), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        client(int(sys.argv[2]), int(sys.argv[3]))
