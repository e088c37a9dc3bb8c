//! The webhook's serving certificate when the chart provides none: one self-signed certificate
//! shared by all operator replicas through a Secret (the first replica creates it, the others
//! read it), and the ValidatingWebhookConfiguration's caBundle patched to trust it.

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::collections::BTreeMap;

/// A certificate and its key, PEM.
pub struct ServingCert {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// A new self-signed certificate for the webhook Service's DNS names (and loopback, for
/// webhooks reached by URL).
pub fn self_signed(service: &str, namespace: &str) -> anyhow::Result<ServingCert> {
    let names = vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{service}.{namespace}.svc"),
    );
    let cert = params.self_signed(&key)?;
    Ok(ServingCert {
        cert_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
    })
}

/// Reads the shared certificate from Secret `name`, creating it if no replica has yet.
pub async fn shared_cert(
    client: &Client,
    namespace: &str,
    name: &str,
    service: &str,
) -> anyhow::Result<ServingCert> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |s: &Secret| -> Option<ServingCert> {
        let d = s.data.as_ref()?;
        Some(ServingCert {
            cert_pem: d.get("tls.crt")?.0.clone(),
            key_pem: d.get("tls.key")?.0.clone(),
        })
    };
    if let Some(existing) = secrets.get_opt(name).await? {
        if let Some(c) = read(&existing) {
            return Ok(c);
        }
    }
    let fresh = self_signed(service, namespace)?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), ByteString(fresh.cert_pem.clone())),
            ("tls.key".to_string(), ByteString(fresh.key_pem.clone())),
        ])),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(fresh),
        // Another replica won the race: use its certificate.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = secrets.get(name).await?;
            read(&s)
                .ok_or_else(|| anyhow::anyhow!("Secret {namespace}/{name} has no tls.crt/tls.key"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Sets the caBundle of every webhook in the configuration to `ca_pem`.
pub async fn patch_ca_bundle(
    client: &Client,
    config_name: &str,
    ca_pem: &[u8],
) -> anyhow::Result<()> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let vwc = api.get(config_name).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot read ValidatingWebhookConfiguration {config_name} to set its caBundle: {e}"
        )
    })?;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let webhooks: Vec<serde_json::Value> = vwc
        .webhooks
        .unwrap_or_default()
        .iter()
        .map(|w| serde_json::json!({"name": w.name, "clientConfig": {"caBundle": bundle}}))
        .collect();
    // A strategic merge patch merges the webhooks list by name and touches only caBundle.
    api.patch(
        config_name,
        &PatchParams::default(),
        &Patch::Strategic(serde_json::json!({ "webhooks": webhooks })),
    )
    .await?;
    tracing::info!(config = config_name, "webhook caBundle set");
    Ok(())
}
