#!/usr/bin/env python3
"""A reference client of Motey's peer protocol version 2, written from
agent/src/peer/PROTOCOL.md: a Noise_XX_25519_ChaChaPoly_BLAKE2s session over a libzmq
REQ socket (pyzmq, noiseprotocol), the static key proven with the cluster key, one
capability request. Prints the reply's payload as JSON; exits 1 on a refusal.

    peer_client.py ENDPOINT CLUSTER_KEY OWN_NODE_ID SERVER_NODE_ID
"""

import hashlib
import hmac
import json
import os
import sys
import time
import uuid

import zmq
from noise.connection import Keypair, NoiseConnection

PROTOCOL = b"Noise_XX_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"motey-peer/2"
PROOF_CONTEXT = b"motey-noise-static-v2"
CHUNK = 65535 - 16


def proof_mac(cluster_key, static_public, node):
    data = PROOF_CONTEXT + static_public + node.encode()
    return hmac.new(cluster_key, data, hashlib.sha256).hexdigest()


def seal(noise, plaintext):
    chunks = [plaintext[i:i + CHUNK] for i in range(0, len(plaintext), CHUNK)] or [b""]
    return [noise.encrypt(chunk) for chunk in chunks]


def refuse(frames):
    """Exits naming a refusal sent outside the session."""
    if frames and frames[0] == b"error":
        error = json.loads(frames[1])
        sys.exit(f"refused: {error['code']}: {error['message']}")
    sys.exit(f"unexpected frames: {frames[:1]}")


def main():
    endpoint, secret, own, server = sys.argv[1:5]
    cluster_key = secret.strip().encode()
    private = os.urandom(32)

    noise = NoiseConnection.from_name(PROTOCOL)
    noise.set_as_initiator()
    noise.set_keypair_from_private_bytes(Keypair.STATIC, private)
    noise.set_prologue(PROLOGUE)
    noise.start_handshake()
    own_public = noise.noise_protocol.keypairs["s"].public_bytes

    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, 30_000)
    socket.connect(endpoint)

    socket.send_multipart([b"hello", noise.write_message()])
    frames = socket.recv_multipart()
    if frames[0] != b"welcome":
        refuse(frames)
    proof = json.loads(noise.read_message(frames[1]))
    server_public = noise.noise_protocol.handshake_state.rs.public_bytes
    expected = proof_mac(cluster_key, server_public, proof["node"])
    if not hmac.compare_digest(expected, proof["mac"]) or proof["node"] != server:
        sys.exit(f"the server's proof does not hold for node {server}")

    own_proof = json.dumps({"node": own, "mac": proof_mac(cluster_key, own_public, own)})
    finish = noise.write_message(own_proof.encode())
    request_id = str(uuid.uuid4())
    request = {
        "v": 2,
        "type": "capability_request",
        "id": request_id,
        "sender": own,
        "to": server,
        "ts": int(time.time() * 1000),
        "nonce": os.urandom(16).hex(),
        "payload": {},
    }
    socket.send_multipart([b"finish", finish] + seal(noise, json.dumps(request).encode()))
    frames = socket.recv_multipart()
    if frames[0] != b"reply":
        refuse(frames)
    reply = json.loads(b"".join(noise.decrypt(frame) for frame in frames[1:]))
    if reply["id"] != request_id or reply["sender"] != server or reply["to"] != own:
        sys.exit(f"the reply does not answer this request: {reply}")
    if reply["type"] == "error":
        sys.exit(f"refused: {reply['payload']['code']}: {reply['payload']['message']}")
    print(json.dumps(reply["payload"]))


if __name__ == "__main__":
    main()
