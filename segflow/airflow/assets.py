"""Airflow Assets that chain the DAGs: build -> score, train -> score; stream -> activate."""

from airflow.sdk import Asset, AssetWatcher

USER_FEATURES = Asset("segflow.marts.user_features")
CHAMPION_MODELS = Asset("segflow.mlflow.champion_models")
USER_SCORES = Asset("segflow.marts.user_scores")

TRIGGERS_URI = "segflow.stream.triggers"
# The Airflow connection of the stream's Redis: AIRFLOW_CONN_SEGFLOW_STREAM, derived from stream.url
# (segflow.airflow.environment); the triggerer subscribes with it.
STREAM_CONN_ID = "segflow_stream"


def stream_triggers() -> Asset:
    """New trigger transitions on the stream consumer's output. With `stream.url` set the asset is watched: an
    AssetWatcher (MessageQueueTrigger, redis+pubsub) in the triggerer hears the consumer's announcement on
    `<prefix>:triggers:notify` and the scheduler runs the DAGs scheduled on it. Without a stream it is a plain
    asset nothing updates."""
    from segflow.core.config import load_settings

    cfg = load_settings().raw["stream"]
    if not cfg.get("url"):
        return Asset(TRIGGERS_URI)
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    trigger = MessageQueueTrigger(
        scheme="redis+pubsub",
        channels=[f"{cfg['key_prefix']}:triggers:notify"],
        redis_conn_id=STREAM_CONN_ID,
        poll_interval=1,  # seconds between reads of the subscription (the provider's default is 60)
    )
    return Asset(TRIGGERS_URI, watchers=[AssetWatcher(name="segflow_stream_triggers", trigger=trigger)])
