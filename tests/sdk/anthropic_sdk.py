"""Drives aiproxy with the official anthropic SDK; prints one JSON line per check.

Environment: AIPROXY_URL (the proxy), AIPROXY_KEY (a valid key).
"""
import json
import os
import warnings

import anthropic

warnings.simplefilter("ignore", DeprecationWarning)
url, key = os.environ["AIPROXY_URL"], os.environ["AIPROXY_KEY"]
client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
ask = dict(model="claude-sonnet-4-5", max_tokens=32, messages=[{"role": "user", "content": "hi"}])

message = client.messages.create(**ask)
print(json.dumps({"check": "create", "text": message.content[0].text,
                  "input_tokens": message.usage.input_tokens, "output_tokens": message.usage.output_tokens}))

with client.messages.stream(**ask) as stream:
    chunks = list(stream.text_stream)
    final = stream.get_final_message()
print(json.dumps({"check": "stream", "chunks": chunks, "output_tokens": final.usage.output_tokens}))

try:
    anthropic.Anthropic(base_url=url, api_key="sk-aiproxy-wrong", max_retries=0).messages.create(**ask)
    print(json.dumps({"check": "bad_key", "status": 200}))
except anthropic.AuthenticationError as e:
    print(json.dumps({"check": "bad_key", "status": e.status_code, "message": e.body["error"]["message"]}))
