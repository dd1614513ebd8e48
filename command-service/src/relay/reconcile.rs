//! Start-up reconciliation of the relay's checkpoint with what the stream really holds.

use super::{Position, Relay, RelayError, START};

impl Relay {
    /// The checkpoint, moved to the last event the stream really holds: forward if we crashed
    /// between publishing and checkpointing, backward if the stream lost messages.
    pub(super) async fn reconcile(&self) -> Result<Position, RelayError> {
        sqlx::query("INSERT INTO relay_checkpoints (stream) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&self.stream)
            .execute(&self.pool)
            .await?;
        let (tx_id, global_position, stream_sequence): (String, i64, i64) = sqlx::query_as(
            "SELECT tx_id::text, global_position, stream_sequence FROM relay_checkpoints WHERE stream = $1",
        )
        .bind(&self.stream)
        .fetch_one(&self.pool)
        .await?;
        let checkpoint = Position {
            tx_id: tx_id.parse().unwrap_or(0),
            global_position,
            stream_sequence: u64::try_from(stream_sequence).unwrap_or(0),
        };
        let mut stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|e| RelayError::Stream(e.to_string()))?;
        let last_seq = stream
            .info()
            .await
            .map_err(|e| RelayError::Stream(e.to_string()))?
            .state
            .last_sequence;
        if last_seq == 0 {
            if stream_sequence > 0 {
                tracing::warn!(stream = %self.stream, "stream is empty but was published to; re-publishing all history");
            }
            return self.save_checkpoint(START).await;
        }
        let message = stream
            .get_raw_message(last_seq)
            .await
            .map_err(|e| RelayError::Stream(e.to_string()))?;
        let msg_id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let mut parts = msg_id.rsplitn(3, ':');
        let (Some(seq), Some(id), Some(kind)) = (parts.next(), parts.next(), parts.next()) else {
            return Ok(checkpoint);
        };
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT tx_id::text, global_position FROM events
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
        )
        .bind(kind)
        .bind(id)
        .bind(seq.parse::<i64>().unwrap_or(-1))
        .fetch_optional(&self.pool)
        .await?;
        let Some((tx, gp)) = row else {
            return Ok(checkpoint);
        };
        let actual = Position {
            tx_id: tx.parse().unwrap_or(0),
            global_position: gp,
            stream_sequence: last_seq,
        };
        if actual != checkpoint {
            tracing::info!(
                ?checkpoint,
                ?actual,
                "relay checkpoint reconciled with the stream"
            );
            return self.save_checkpoint(actual).await;
        }
        Ok(checkpoint)
    }
}
