"""Drives aiproxy with the official google-genai SDK; prints one JSON line per check.

Environment: AIPROXY_URL (the proxy), AIPROXY_KEY (a valid key).
"""
import json
import os

from google import genai
from google.genai import errors, types

url, key = os.environ["AIPROXY_URL"], os.environ["AIPROXY_KEY"]
options = types.HttpOptions(base_url=url, api_version="v1beta")
client = genai.Client(api_key=key, http_options=options)

reply = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
print(json.dumps({"check": "generate", "text": reply.text,
                  "thoughts": reply.usage_metadata.thoughts_token_count}))

chunks = [c.text for c in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")]
print(json.dumps({"check": "stream", "chunks": chunks}))

count = client.models.count_tokens(model="gemini-2.5-flash", contents="hi")
print(json.dumps({"check": "count", "total": count.total_tokens}))

wrong = genai.Client(api_key="wrong", http_options=options)
try:
    wrong.models.generate_content(model="gemini-2.5-flash", contents="hi")
    print(json.dumps({"check": "bad_key", "status": 200}))
except errors.ClientError as e:
    print(json.dumps({"check": "bad_key", "status": e.code, "message": e.message}))
