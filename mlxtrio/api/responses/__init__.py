"""The OpenAI Responses API surface: /v1/responses, its stream events and its stored conversations.

``_store`` keeps stored responses (``store``, ``previous_response_id``, the
GET/DELETE endpoints) in SQLite under the state directory.
"""
