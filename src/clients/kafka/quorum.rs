//! The KRaft controller quorum through Kafka's `DescribeQuorum` API (key 55), which a broker
//! forwards to the active controller: who leads the metadata log, and how far each voter got.
//!
//! librdkafka has no call for it, and what it does have is no answer: in KRaft mode a broker
//! fills the Metadata (and DescribeCluster) response's controller id with a *random live
//! broker* (`KRaftMetadataCache.getRandomAliveBrokerId`, KIP-590), so `rd_kafka_controllerid`
//! names a different node from one call to the next on a cluster of several. This is one
//! request and one response of the wire protocol over plain TCP: a broker that requires SASL
//! is not asked.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const API_KEY: i16 = 55;
/// v1 (Kafka 3.4+, KIP-836): adds the replicas' fetch times, which are not used here, and is
/// the newest version whose response carries no per-node endpoints.
const API_VERSION: i16 = 1;
const METADATA_TOPIC: &str = "__cluster_metadata";

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Quorum {
    /// The active controller: the leader of the metadata log (-1 while none is elected).
    pub leader_id: i32,
    pub leader_epoch: i32,
    pub high_watermark: i64,
    pub voters: Vec<Replica>,
    pub observers: Vec<Replica>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Replica {
    pub id: i32,
    /// The voter's last known end of the metadata log (-1 when unknown).
    pub log_end_offset: i64,
}

/// Asks the broker at `address` (host:port) to describe the quorum.
pub async fn describe(address: &str, timeout: Duration) -> Result<Quorum> {
    tokio::time::timeout(timeout, async {
        let mut s = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        s.write_all(&request(1)).await?;
        let len = s.read_i32().await.context("reading the DescribeQuorum response")?;
        ensure!((4..=1 << 20).contains(&len), "DescribeQuorum response of {len} bytes");
        let mut body = vec![0; len as usize];
        s.read_exact(&mut body).await?;
        parse(&body, 1)
    })
    .await
    .unwrap_or_else(|_| bail!("no DescribeQuorum answer from {address} within {timeout:?}"))
}

/// Length-prefixed request: header v2 (flexible), then the body asking for partition 0 of the
/// metadata log.
fn request(correlation_id: i32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(API_KEY.to_be_bytes());
    b.extend(API_VERSION.to_be_bytes());
    b.extend(correlation_id.to_be_bytes());
    let client = b"labctl";
    b.extend((client.len() as i16).to_be_bytes()); // client_id stays a non-compact string
    b.extend(client);
    b.push(0); // header tagged fields
    b.push(2); // topics: compact array of 1
    b.push(METADATA_TOPIC.len() as u8 + 1);
    b.extend(METADATA_TOPIC.as_bytes());
    b.push(2); // partitions: compact array of 1
    b.extend(0i32.to_be_bytes());
    b.push(0); // partition tagged fields
    b.push(0); // topic tagged fields
    b.push(0); // body tagged fields
    let mut out = (b.len() as i32).to_be_bytes().to_vec();
    out.extend(b);
    out
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        ensure!(self.b.len() >= n, "DescribeQuorum response ends early");
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into()?))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into()?))
    }
    fn uvarint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("varint too long")
    }
    /// Compact array length (stored as n + 1; 0 is null).
    fn len(&mut self) -> Result<usize> {
        Ok(self.uvarint()?.saturating_sub(1) as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn skip_tags(&mut self) -> Result<()> {
        for _ in 0..self.uvarint()? {
            let _tag = self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(())
    }
    fn replicas(&mut self, version: i16) -> Result<Vec<Replica>> {
        (0..self.len()?)
            .map(|_| {
                let r = Replica { id: self.i32()?, log_end_offset: self.i64()? };
                if version >= 1 {
                    self.i64()?; // last fetch
                    self.i64()?; // last caught up
                }
                self.skip_tags()?;
                Ok(r)
            })
            .collect()
    }
}

/// A response (after its length prefix): header v1, then the body of `version`.
fn parse(body: &[u8], correlation_id: i32) -> Result<Quorum> {
    let mut r = Reader { b: body };
    ensure!(r.i32()? == correlation_id, "DescribeQuorum answer to another request");
    r.skip_tags()?;
    let error = r.i16()?;
    ensure!(error == 0, "DescribeQuorum refused: {}", error_name(error));
    let mut found = None;
    for _ in 0..r.len()? {
        let topic = r.string()?;
        for _ in 0..r.len()? {
            let partition = r.i32()?;
            let error = r.i16()?;
            let (leader_id, leader_epoch, high_watermark) = (r.i32()?, r.i32()?, r.i64()?);
            let voters = r.replicas(API_VERSION)?;
            let observers = r.replicas(API_VERSION)?;
            r.skip_tags()?;
            if topic == METADATA_TOPIC && partition == 0 {
                ensure!(error == 0, "DescribeQuorum of {topic}: {}", error_name(error));
                found = Some(Quorum { leader_id, leader_epoch, high_watermark, voters, observers });
            }
        }
        r.skip_tags()?;
    }
    found.context("DescribeQuorum answer without the metadata log")
}

fn error_name(code: i16) -> String {
    match code {
        29 => "cluster authorization failed (needs DESCRIBE on the cluster)".into(),
        35 => "unsupported version".into(),
        6 => "not the leader".into(),
        c => format!("error code {c}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_the_documented_bytes() {
        let r = request(7);
        assert_eq!(i32::from_be_bytes(r[..4].try_into().unwrap()) as usize, r.len() - 4);
        assert_eq!(&r[4..12], &[0, 55, 0, 1, 0, 0, 0, 7]);
        assert_eq!(&r[12..20], b"\x00\x06labctl");
        assert!(r.ends_with(b"\x00\x02\x13__cluster_metadata\x02\x00\x00\x00\x00\x00\x00\x00"));
    }

    /// A v1 response as a single combined node answers it: node 1 leads, no observers.
    #[test]
    fn parses_a_response() {
        let mut b = Vec::new();
        b.extend(1i32.to_be_bytes());
        b.push(0);
        b.extend(0i16.to_be_bytes());
        b.push(2);
        b.push(METADATA_TOPIC.len() as u8 + 1);
        b.extend(METADATA_TOPIC.as_bytes());
        b.push(2);
        b.extend(0i32.to_be_bytes());
        b.extend(0i16.to_be_bytes());
        b.extend(1i32.to_be_bytes()); // leader
        b.extend(3i32.to_be_bytes()); // epoch
        b.extend(1234i64.to_be_bytes()); // high watermark
        b.push(2); // one voter
        b.extend(1i32.to_be_bytes());
        b.extend(1234i64.to_be_bytes());
        b.extend((-1i64).to_be_bytes());
        b.extend(99i64.to_be_bytes());
        b.push(0);
        b.push(1); // no observers
        b.extend([1, 0, 2, 0xab, 0xcd]); // one tagged field (high watermark update time), skipped
        b.push(0);
        b.push(0);
        let q = parse(&b, 1).unwrap();
        assert_eq!(
            q,
            Quorum {
                leader_id: 1,
                leader_epoch: 3,
                high_watermark: 1234,
                voters: vec![Replica { id: 1, log_end_offset: 1234 }],
                observers: vec![]
            }
        );
        assert!(parse(&b[..b.len() - 3], 1).is_err(), "a cut-off answer is an error, not a guess");
        let mut refused = b[..5].to_vec();
        refused.extend(29i16.to_be_bytes());
        assert!(format!("{:#}", parse(&refused, 1).unwrap_err()).contains("authorization"));
    }
}
