"""A whole tool loop through the proxy with the OpenAI SDK: the model calls, we run the tool, it answers.

Start a scripted upstream and the proxy first (README, "Tool calling").
"""

import json

from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8600/v1", api_key="unused")
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather now in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
messages = [{"role": "user", "content": "What is the weather in Paris?"}]

first = client.chat.completions.create(model="any", messages=messages, tools=tools).choices[0]
print(first.finish_reason, repr(first.message.content))  # tool_calls 'I will look that up.'
messages.append(first.message.model_dump(exclude_none=True))  # the assistant turn, with its tool_calls
for call in first.message.tool_calls:
    city = json.loads(call.function.arguments)["city"]
    print("calling", call.function.name, "for", city)
    messages.append({"role": "tool", "tool_call_id": call.id, "content": f"sunny, 21 °C in {city}"})

final = client.chat.completions.create(model="any", messages=messages, tools=tools).choices[0]
print(final.finish_reason, final.message.content)  # stop It is sunny in Paris, 21 °C: no umbrella needed.
