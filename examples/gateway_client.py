"""The OpenAI Batch API workflow against `corral gateway`, with the official `openai` SDK.

Start a gateway first (`corral gateway --local`, or with --config / --server), then:
    python examples/gateway_client.py [http://127.0.0.1:8600/v1]
"""

import json
import sys
import time

from openai import OpenAI

client = OpenAI(base_url=sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8600/v1", api_key="unused")
model = "smollm2"  # the model `corral gateway --local` answers to

lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
          "body": {"model": model, "max_tokens": 24, "temperature": 0, "seed": 1,
                   "messages": [{"role": "user", "content": question}]}}
         for i, question in enumerate(["What is the capital of France?", "Name a primary colour.",
                                       "What is 2 + 2?"])]
lines.append({"custom_id": "q3", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}})
with open("gateway_batch.jsonl", "w") as handle:
    handle.writelines(json.dumps(line) + "\n" for line in lines)

uploaded = client.files.create(file=open("gateway_batch.jsonl", "rb"), purpose="batch")
print("uploaded", uploaded.id, uploaded.bytes, "bytes")
batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"team": "docs"})
while batch.status not in ("completed", "failed", "expired", "cancelled"):
    time.sleep(1)
    batch = client.batches.retrieve(batch.id)
print(batch.id, batch.status, batch.request_counts)
for line in client.files.content(batch.output_file_id).text.splitlines():
    row = json.loads(line)
    print(row["custom_id"], "->", row["response"]["body"]["choices"][0]["message"]["content"][:60].replace("\n", " "))
for line in client.files.content(batch.error_file_id).text.splitlines():
    row = json.loads(line)
    print(row["custom_id"], "failed:", row["response"]["status_code"], row["response"]["body"]["error"]["message"])
print([b.id for b in client.batches.list(limit=5)])
