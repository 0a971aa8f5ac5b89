"""Calls the router with grpcio (gRPC C-core) at several deadlines, all at once.

Usage: python3 tests/clients/grpcio_deadlines.py HOST:PORT REQUEST_HEX SECONDS...

REQUEST_HEX is a serialized router.v1.ConverseRequest (the Rust test encodes it, so no
generated stubs are needed). Prints one JSON line per deadline: the code, the details and
whether the status carried the router's x-request-id (a status from the client's own timer has
no trailers). tests/deadlines.rs runs it against a simulated model slower than every deadline.
"""

import json
import sys
import time

import grpc


def main(target: str, request_hex: str, deadlines: list[float]) -> None:
    request = bytes.fromhex(request_hex)
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        converse = channel.unary_unary("/router.v1.PromptRouter/Converse")
        started, ended, calls = {}, {}, {}
        for deadline in deadlines:
            started[deadline] = time.monotonic()
            calls[deadline] = converse.future(request, timeout=deadline)
            calls[deadline].add_done_callback(
                lambda _, d=deadline: ended.setdefault(d, time.monotonic())
            )
        for deadline in deadlines:
            call = calls[deadline]
            try:
                call.result()
                code, details, trailers = "OK", "", ()
            except grpc.RpcError:
                code, details = call.code().name, call.details()
                trailers = call.trailing_metadata() or ()
            print(
                json.dumps(
                    {
                        "deadline": deadline,
                        "code": code,
                        "details": details,
                        "request_id": any(key == "x-request-id" for key, _ in trailers),
                        "elapsed": ended.get(deadline, time.monotonic()) - started[deadline],
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [float(s) for s in sys.argv[3:]])
