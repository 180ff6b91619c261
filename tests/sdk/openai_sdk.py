"""Drives aiproxy with the official openai SDK; prints one JSON line per check.

Environment: AIPROXY_URL (the proxy), AIPROXY_KEY (a valid key).
"""
import json
import os

import openai

url, key = os.environ["AIPROXY_URL"], os.environ["AIPROXY_KEY"]
client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
messages = [{"role": "user", "content": "hi"}]

chat = client.chat.completions.create(model="gpt-4o", messages=messages)
print(json.dumps({"check": "chat", "text": chat.choices[0].message.content,
                  "prompt_tokens": chat.usage.prompt_tokens}))

chunks = [c.choices[0].delta.content for c in client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)
          if c.choices and c.choices[0].delta.content]
print(json.dumps({"check": "chat_stream", "chunks": chunks}))

response = client.responses.create(model="gpt-5", input="hi")
print(json.dumps({"check": "responses", "text": response.output_text, "output_tokens": response.usage.output_tokens}))

events = [e.delta for e in client.responses.create(model="gpt-5", input="hi", stream=True)
          if e.type == "response.output_text.delta"]
print(json.dumps({"check": "responses_stream", "chunks": events}))

print(json.dumps({"check": "models", "ids": sorted(m.id for m in client.models.list())}))

try:
    openai.OpenAI(base_url=url + "/v1", api_key="sk-aiproxy-wrong", max_retries=0).chat.completions.create(model="gpt-4o", messages=messages)
    print(json.dumps({"check": "bad_key", "status": 200}))
except openai.AuthenticationError as e:
    print(json.dumps({"check": "bad_key", "status": e.status_code, "message": e.body["message"]}))
