//! The validating admission webhook: refuses a PortRange that is invalid, touches the reserved
//! host ports, or overlaps an accepted PortRange on the same uplink and protocol — naming the
//! other object. The decision is `review`, a pure function; the rest serves it over TLS.

use crate::cluster::CLUSTER_WIDE_UPLINK;
use crate::model::overlap::owned_spans;
use crate::model::{validate, ObjectKey, PortRange};
use axum::{extract::State, routing::post, Json, Router};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use kube::runtime::reflector::Store;
use std::sync::Arc;

/// Whether the operator has accepted `r` (only accepted ranges own ports).
pub fn is_accepted(r: &PortRange) -> bool {
    r.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == crate::cluster::ACCEPTED && c.status == "True")
    })
}

fn uplinks_meet(a: &[String], b: &[String]) -> Option<String> {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Some(CLUSTER_WIDE_UPLINK.into()),
        (true, false) => b.first().cloned(),
        (false, true) => a.first().cloned(),
        (false, false) => a.iter().find(|u| b.contains(u)).cloned(),
    }
}

/// Allows or denies `candidate` against the accepted ones of `ranges` and the reserved ports.
pub fn review(
    candidate: &PortRange,
    ranges: &[Arc<PortRange>],
    reserved: &[(u16, u16)],
) -> Result<(), String> {
    validate(candidate).map_err(|e| e.to_string())?;
    let me = ObjectKey::of(candidate);
    let mine = owned_spans(candidate);
    for &(i, p, s, e) in &mine {
        if let Some(&(a, b)) = reserved.iter().find(|&&(a, b)| a <= e && s <= b) {
            return Err(format!(
                "spec.ports[{i}] ({p} {s}-{e}) touches the host's reserved ports {a}-{b}: use ports outside them"
            ));
        }
    }
    for other in ranges
        .iter()
        .filter(|o| is_accepted(o) && ObjectKey::of(o) != me)
    {
        let Some(uplink) = uplinks_meet(&candidate.spec.uplinks, &other.spec.uplinks) else {
            continue;
        };
        for &(i, p, s, e) in &mine {
            for (j, q, os, oe) in owned_spans(other) {
                if p == q && s <= oe && os <= e {
                    let on = if uplink == CLUSTER_WIDE_UPLINK {
                        "every uplink".to_string()
                    } else {
                        format!("uplink {uplink}")
                    };
                    return Err(format!(
                        "spec.ports[{i}] ({p} {s}-{e}) overlaps PortRange {} spec.ports[{j}] ({q} {os}-{oe}) on {on}: ports {}-{} are taken; pick other ports",
                        ObjectKey::of(other),
                        s.max(os),
                        e.min(oe)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// What the HTTP handler needs.
#[derive(Clone)]
pub struct WebhookState {
    pub ranges: Store<PortRange>,
    pub reserved: Arc<Vec<(u16, u16)>>,
}

async fn validate_handler(
    State(state): State<WebhookState>,
    Json(body): Json<AdmissionReview<PortRange>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<PortRange> = match body.try_into() {
        Ok(r) => r,
        Err(e) => return Json(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    let resp = AdmissionResponse::from(&req);
    let Some(obj) = req.object.as_ref() else {
        return Json(resp.into_review());
    };
    let resp = match review(obj, &state.ranges.state(), &state.reserved) {
        Ok(()) => resp,
        Err(reason) => {
            tracing::info!(portrange = %ObjectKey::of(obj), %reason, "admission denied");
            resp.deny(reason)
        }
    };
    Json(resp.into_review())
}

/// Serves `POST /validate` over TLS until the process ends.
pub async fn serve(
    addr: std::net::SocketAddr,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    state: WebhookState,
) -> anyhow::Result<()> {
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(cert_pem, key_pem).await?;
    let app = Router::new()
        .route("/validate", post(validate_handler))
        .with_state(state);
    tracing::info!(%addr, "admission webhook serving");
    axum_server::bind_rustls(addr, tls)
        .serve(app.into_make_service())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PortRangeSpec, PortRangeStatus, PortSpan, Protocol};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};

    fn range(name: &str, uplinks: &[&str], ports: Vec<PortSpan>, accepted: bool) -> Arc<PortRange> {
        let mut r = PortRange::new(
            name,
            PortRangeSpec {
                selector: LabelSelector::default(),
                ports,
                uplinks: uplinks.iter().map(|s| s.to_string()).collect(),
            },
        );
        r.metadata.namespace = Some("team".into());
        if accepted {
            r.status = Some(PortRangeStatus {
                conditions: vec![Condition {
                    type_: "Accepted".into(),
                    status: "True".into(),
                    reason: "Accepted".into(),
                    message: String::new(),
                    observed_generation: None,
                    last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                }],
                ..Default::default()
            });
        }
        Arc::new(r)
    }

    #[test]
    fn overlaps_with_accepted_ranges_are_denied_naming_the_other() {
        let web = range(
            "web",
            &[],
            vec![PortSpan::ports(Protocol::Tcp, 10000, 10099)],
            true,
        );
        let pending = range(
            "pending",
            &[],
            vec![PortSpan::ports(Protocol::Tcp, 11000, 11099)],
            false,
        );
        let all = [web.clone(), pending];
        let e = review(
            &range(
                "new",
                &[],
                vec![PortSpan::ports(Protocol::Tcp, 10050, 10150)],
                false,
            ),
            &all,
            &[],
        )
        .unwrap_err();
        assert!(
            e.contains("team/web") && e.contains("10050-10099") && e.contains("every uplink"),
            "{e}"
        );
        let e = review(
            &range(
                "new",
                &["eth1"],
                vec![PortSpan::ports(Protocol::Tcp, 10099, 10099)],
                false,
            ),
            &all,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("uplink eth1"), "{e}");
        assert!(
            review(
                &range(
                    "new",
                    &[],
                    vec![PortSpan::ports(Protocol::Udp, 10050, 10150)],
                    false
                ),
                &all,
                &[]
            )
            .is_ok(),
            "other protocol"
        );
        assert!(
            review(
                &range(
                    "new",
                    &[],
                    vec![PortSpan::ports(Protocol::Tcp, 11000, 11000)],
                    false
                ),
                &all,
                &[]
            )
            .is_ok(),
            "not accepted: not owned"
        );
        // An update of web itself does not collide with its old self.
        assert!(review(
            &range(
                "web",
                &[],
                vec![PortSpan::ports(Protocol::Tcp, 10000, 10049)],
                true
            ),
            &all,
            &[]
        )
        .is_ok());
    }

    #[test]
    fn reserved_and_invalid_ranges_are_denied_with_the_field() {
        let e = review(
            &range(
                "r",
                &[],
                vec![PortSpan::ports(Protocol::Udp, 9990, 10010)],
                false,
            ),
            &[],
            &[(0, 9999)],
        )
        .unwrap_err();
        assert!(e.contains("spec.ports[0]") && e.contains("reserved"), "{e}");
        let e = review(
            &range(
                "r",
                &[],
                vec![PortSpan::ports(Protocol::Udp, 20, 10)],
                false,
            ),
            &[],
            &[],
        )
        .unwrap_err();
        assert!(e.contains("spec.ports[0]") && e.contains("swap"), "{e}");
    }
}
