"""An independent Bedrock client (boto3/botocore) against `prompt-router simulate`.

Usage: python3 tests/clients/boto3_check.py http://127.0.0.1:PORT

Checks that botocore parses the simulator's Converse and ConverseStream answers and its error
shapes (HTTP errors and mid-stream exception events) exactly as it parses Bedrock's; prints
one line per check and exits non-zero on the first mismatch. tests/processes.rs runs it.
"""

import sys

import boto3
import botocore


def main(endpoint: str) -> None:
    client = boto3.client(
        "bedrock-runtime",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )
    haiku = "us.anthropic.claude-3-haiku-20240307-v1:0"
    user = lambda text: [{"role": "user", "content": [{"text": text}]}]  # noqa: E731

    reply = client.converse(
        modelId=haiku,
        messages=user("Hello there"),
        inferenceConfig={"maxTokens": 20, "temperature": 0.2, "topP": 0.9},
        additionalModelRequestFields={"top_k": 40},
    )
    text = reply["output"]["message"]["content"][0]["text"]
    usage = reply["usage"]
    assert reply["stopReason"] == "max_tokens", reply["stopReason"]
    assert usage["outputTokens"] == 20 and usage["totalTokens"] == usage["inputTokens"] + 20, usage
    # 20 tokens do not even hold the whole "[model id] " header the simulator starts with.
    assert text.startswith("[us.anthropic.claude-3-haiku"), text
    print("converse ok:", reply["stopReason"], usage)

    stream = client.converse_stream(modelId=haiku, messages=user("Stream please"))
    kinds, streamed, usage = [], "", None
    for event in stream["stream"]:
        kind = next(iter(event))
        kinds.append(kind)
        if kind == "contentBlockDelta":
            streamed += event[kind]["delta"]["text"]
        elif kind == "metadata":
            usage = event[kind]["usage"]
    order = list(dict.fromkeys(kinds))
    assert order == ["messageStart", "contentBlockDelta", "contentBlockStop", "messageStop", "metadata"], order
    assert usage["outputTokens"] == kinds.count("contentBlockDelta"), (usage, kinds.count("contentBlockDelta"))
    assert streamed.startswith(f"[{haiku}]"), streamed
    print("converse_stream ok:", " > ".join(order), usage)

    for name, status in [("ThrottlingException", 429), ("ModelTimeoutException", 408), ("ServiceUnavailableException", 503)]:
        try:
            client.converse(modelId=haiku, messages=user(f"x [sim:fail={name}]"))
            raise AssertionError(f"{name} was not raised")
        except botocore.exceptions.ClientError as error:
            got = (error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"])
            assert got == (name, status), got
            print("error ok:", name, status, error.response["Error"]["Message"])

    try:
        client.converse(modelId="eu.anthropic.claude-3-5-sonnet-20241022-v2:0", messages=user("x"))
        raise AssertionError("an unknown profile was accepted")
    except client.exceptions.ValidationException as error:
        print("typed ValidationException ok:", error.response["Error"]["Message"])

    stream = client.converse_stream(modelId=haiku, messages=user("go [sim:fail=throttlingException;after=2]"))
    deltas = 0
    try:
        for event in stream["stream"]:
            deltas += "contentBlockDelta" in event
        raise AssertionError("the mid-stream exception was not raised")
    except botocore.exceptions.EventStreamError as error:
        assert (deltas, error.response["Error"]["Code"]) == (2, "throttlingException"), (deltas, error.response)
        print("mid-stream exception ok after", deltas, "deltas:", error.response["Error"]["Code"])


if __name__ == "__main__":
    main(sys.argv[1])
