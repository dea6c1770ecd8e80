//! `type: azure-blob`: Azure Blob Storage (and the Azurite emulator).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cache_core::params::Params;
use cache_core::{CacheError, Result};
use object_store::azure::{
    AzureAuthorizer, AzureConfigKey, AzureCredentialProvider, MicrosoftAzureBuilder,
};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};

use crate::backend::{ObjectStoreBackend, Provisioner};
use crate::naming::ObjectNaming;
use crate::settings::{ClientSettings, Secret, build_error, optional, required, secret};

/// The account of the Azurite emulator.
pub const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's account key: public, the same on every installation (Microsoft documents it).
const EMULATOR_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Configuration of an Azure Blob backend, with LiteLLM's `cache_params` names.
///
/// Credentials, in order: `azure_account_key`, `azure_sas_token`, then `object_store`'s chain
/// (the environment's `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_SAS_KEY`, a service principal
/// in `AZURE_CLIENT_ID`/`AZURE_CLIENT_SECRET`/`AZURE_TENANT_ID`, workload identity
/// (`AZURE_FEDERATED_TOKEN_FILE`), the Azure CLI when `AZURE_USE_AZURE_CLI=true`, then managed
/// identity): the counterpart of LiteLLM's `DefaultAzureCredential`. For the emulator account
/// `devstoreaccount1` without credentials, Azurite's well-known key is used.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct AzureConfig {
    /// `azure_account_url`: `https://<account>.blob.core.windows.net` (any
    /// `<account>.blob.<cloud suffix>` host), or an emulator URL with the account as the first
    /// path segment (`http://127.0.0.1:10000/devstoreaccount1`). Required.
    pub account_url: String,
    /// `azure_blob_container` (required).
    pub container: String,
    /// `azure_account_key`: shared key of the storage account.
    pub account_key: Option<Secret>,
    /// `azure_sas_token`: a shared access signature (with or without the leading `?`).
    pub sas_token: Option<Secret>,
    /// `azure_create_container` (default true): create the container when it is missing, if the
    /// credentials permit.
    pub create_container: bool,
    /// `azure_blob_path`: prefix of every blob name (an llm-cache extension: LiteLLM stores
    /// blobs at the container root).
    pub prefix: Option<String>,
    /// `object_store_*` settings.
    pub client: ClientSettings,
}

impl fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureConfig")
            .field("account_url", &self.account_url)
            .field("container", &self.container)
            .field("account_key", &self.account_key)
            .field("sas_token", &self.sas_token)
            .field("create_container", &self.create_container)
            .field("prefix", &self.prefix)
            .field("client", &self.client)
            .finish()
    }
}

/// Where an account URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    name: String,
    /// The blob service endpoint, ending with the account for emulator-style URLs.
    endpoint: String,
    http: bool,
}

fn parse_account_url(url: &str) -> std::result::Result<Account, String> {
    let expected = "expected https://<account>.blob.core.windows.net or an emulator URL such as http://127.0.0.1:10000/devstoreaccount1";
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL ({e}); {expected}"))?;
    let http = match uri.scheme_str() {
        Some("https") => false,
        Some("http") => true,
        _ => {
            return Err(format!(
                "{url:?} has no http:// or https:// scheme; {expected}"
            ));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host; {expected}"))?;
    let host = authority.host();
    let scheme = if http { "http" } else { "https" };
    let first_segment = uri
        .path()
        .split('/')
        .find(|s| !s.is_empty())
        .map(str::to_owned);
    if let Some((account, rest)) = host.split_once('.')
        && rest.starts_with("blob.")
        && host.parse::<std::net::Ipv4Addr>().is_err()
    {
        return Ok(Account {
            name: account.to_owned(),
            endpoint: format!("{scheme}://{authority}"),
            http,
        });
    }
    // Emulator style: the account is the first path segment.
    match first_segment {
        Some(account) => Ok(Account {
            endpoint: format!("{scheme}://{authority}/{account}"),
            name: account,
            http,
        }),
        None => Err(format!(
            "{url:?} names no storage account (neither <account>.blob.<suffix> nor a path); {expected}"
        )),
    }
}

impl AzureConfig {
    /// A configuration for `container` at `account_url` with every other setting at its default.
    pub fn new(account_url: impl Into<String>, container: impl Into<String>) -> Self {
        AzureConfig {
            account_url: account_url.into(),
            container: container.into(),
            account_key: None,
            sas_token: None,
            create_container: true,
            prefix: None,
            client: ClientSettings::default(),
        }
    }

    /// Reads LiteLLM's `azure_account_url` and `azure_blob_container`, llm-cache's
    /// `azure_account_key`, `azure_sas_token`, `azure_create_container`, `azure_blob_path` and
    /// the `object_store_*` keys.
    ///
    /// # Errors
    /// A missing or malformed URL, a missing container or a wrong type, naming the key.
    pub fn from_params(p: &Params) -> Result<Self> {
        let account_url = required(p, "azure_account_url", None, "azure-blob")?;
        parse_account_url(&account_url).map_err(|m| p.error("azure_account_url", m))?;
        let container = required(p, "azure_blob_container", None, "azure-blob")?;
        let prefix = optional(p, "azure_blob_path")?;
        ObjectNaming::new(prefix.as_deref()).map_err(|m| p.error("azure_blob_path", m))?;
        Ok(AzureConfig {
            account_url,
            container,
            account_key: secret(p, "azure_account_key")?,
            sas_token: secret(p, "azure_sas_token")?,
            create_container: p.bool("azure_create_container")?.unwrap_or(true),
            prefix,
            client: ClientSettings::from_params(p)?,
        })
    }

    fn account(&self) -> Result<Account> {
        parse_account_url(&self.account_url)
            .map_err(|m| CacheError::Config(format!("cache_params.azure_account_url: {m}")))
    }

    /// The `object_store` builder for this configuration (environment first, then these
    /// settings on top).
    ///
    /// # Errors
    /// A malformed account URL.
    pub fn builder(&self) -> Result<MicrosoftAzureBuilder> {
        let account = self.account()?;
        let mut b = MicrosoftAzureBuilder::from_env()
            .with_use_emulator(false)
            .with_client_options(self.client.client_options())
            .with_retry(self.client.retry_config())
            .with_account(&account.name)
            .with_container_name(&self.container)
            .with_endpoint(account.endpoint.clone())
            .with_allow_http(account.http);
        if let Some(k) = &self.account_key {
            b = b.with_access_key(k.expose());
        } else if let Some(sas) = &self.sas_token {
            b = b.with_config(AzureConfigKey::SasKey, sas.expose());
        } else if account.name == EMULATOR_ACCOUNT
            && b.get_config_value(&AzureConfigKey::AccessKey).is_none()
            && b.get_config_value(&AzureConfigKey::SasKey).is_none()
        {
            b = b.with_access_key(EMULATOR_ACCOUNT_KEY);
        }
        Ok(b)
    }

    /// Connects and, when `create_container` is set, creates the container if it is missing.
    ///
    /// Failing to create it (no permission, the service unreachable) is logged, not returned:
    /// the cache must start even when its store is down. A write that later finds the
    /// container missing tries once more.
    ///
    /// # Errors
    /// A configuration `object_store` rejects.
    pub async fn connect(&self) -> Result<ObjectStoreBackend> {
        crate::install_crypto_provider();
        let account = self.account()?;
        let store = self
            .builder()?
            .build()
            .map_err(|e| build_error("azure-blob", e))?;
        let naming = ObjectNaming::new(self.prefix.as_deref())
            .map_err(|m| CacheError::Config(format!("cache_params.azure_blob_path: {m}")))?;
        let mut backend = ObjectStoreBackend::new("azure-blob", Arc::new(store.clone()), naming)
            .with_max_concurrency(self.client.max_concurrency)
            .with_detail("account", &account.name)
            .with_detail("container", &self.container)
            .with_detail("endpoint", &account.endpoint);
        if self.create_container {
            let http = ReqwestConnector::default()
                .connect(&self.client.client_options().with_allow_http(account.http))
                .map_err(|e| build_error("azure-blob", e))?;
            let creator = Arc::new(ContainerCreator {
                credentials: store.credentials().clone(),
                http,
                account: account.name,
                url: format!("{}/{}?restype=container", account.endpoint, self.container),
            });
            creator.ensure().await;
            backend = backend.with_provisioner(creator);
        }
        Ok(backend)
    }
}

/// Creates the container with one signed `PUT <endpoint>/<container>?restype=container`
/// (`object_store` has no call for it).
struct ContainerCreator {
    credentials: AzureCredentialProvider,
    http: HttpClient,
    account: String,
    url: String,
}

impl fmt::Debug for ContainerCreator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerCreator")
            .field("account", &self.account)
            .field("url", &self.url)
            .finish()
    }
}

impl ContainerCreator {
    async fn create(&self) -> std::result::Result<u16, String> {
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| format!("no credential: {e}"))?;
        let mut request = http::Request::builder()
            .method(http::Method::PUT)
            .uri(&self.url)
            .header(http::header::CONTENT_LENGTH, "0")
            .body(HttpRequestBody::empty())
            .map_err(|e| e.to_string())?;
        AzureAuthorizer::new(&credential, &self.account)
            .try_authorize(&mut request)
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.http.execute(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(response.status().as_u16())
    }
}

#[async_trait]
impl Provisioner for ContainerCreator {
    async fn ensure(&self) -> bool {
        match self.create().await {
            Ok(201) => {
                tracing::info!(account = %self.account, url = %self.url, "created the blob container");
                true
            }
            // ContainerAlreadyExists (or being deleted, which a retry cannot fix now).
            Ok(409) => true,
            Ok(status) => {
                tracing::warn!(
                    account = %self.account,
                    status,
                    "could not create the blob container (no permission?); create it yourself or set azure_create_container: false"
                );
                false
            }
            Err(e) => {
                tracing::warn!(account = %self.account, error = %e, "could not create the blob container");
                false
            }
        }
    }
}

/// The emulator URL of an Azurite instance listening on `endpoint` (`http://127.0.0.1:10000`).
pub fn emulator_account_url(endpoint: &str) -> String {
    format!("{}/{EMULATOR_ACCOUNT}", endpoint.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn p(v: Value) -> Params {
        Params::new(v.as_object().unwrap().clone(), "cache_params")
    }

    #[test]
    fn account_urls() {
        assert_eq!(
            parse_account_url("https://acme.blob.core.windows.net/").unwrap(),
            Account {
                name: "acme".into(),
                endpoint: "https://acme.blob.core.windows.net".into(),
                http: false
            }
        );
        assert_eq!(
            parse_account_url("https://acme.blob.core.chinacloudapi.cn")
                .unwrap()
                .name,
            "acme"
        );
        assert_eq!(
            parse_account_url("http://127.0.0.1:10000/devstoreaccount1").unwrap(),
            Account {
                name: "devstoreaccount1".into(),
                endpoint: "http://127.0.0.1:10000/devstoreaccount1".into(),
                http: true
            }
        );
        for bad in [
            "acme.blob.core.windows.net",
            "ftp://x.blob.core.windows.net",
            "http://127.0.0.1:10000",
            "",
        ] {
            assert!(parse_account_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn litellm_names_and_no_secrets_in_debug() {
        let c = AzureConfig::from_params(&p(json!({
            "azure_account_url": "https://acme.blob.core.windows.net",
            "azure_blob_container": "cache",
            "azure_account_key": "c2VjcmV0LWtleS1ieXRlcw==",
            "azure_blob_path": "llm",
            "azure_create_container": false,
        })))
        .unwrap();
        assert_eq!(c.container, "cache");
        assert!(!c.create_container);
        let debug = format!("{c:?}");
        assert!(!debug.contains("c2VjcmV0"), "{debug}");
        let backend = c.connect().await.unwrap();
        let debug = format!("{backend:?}");
        assert!(!debug.contains("c2VjcmV0"), "{debug}");
        assert_eq!(backend.object_path("ns:k").as_ref(), "llm/ns/k");
    }

    #[test]
    fn errors_name_the_key() {
        for (params, key) in [
            (json!({"azure_blob_container": "c"}), "azure_account_url"),
            (
                json!({"azure_account_url": "nonsense", "azure_blob_container": "c"}),
                "azure_account_url",
            ),
            (
                json!({"azure_account_url": "https://a.blob.core.windows.net"}),
                "azure_blob_container",
            ),
            (
                json!({"azure_account_url": "https://a.blob.core.windows.net", "azure_blob_container": "c", "azure_create_container": "sometimes"}),
                "azure_create_container",
            ),
        ] {
            let err = AzureConfig::from_params(&p(params.clone()))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("cache_params.{key}")),
                "{params}: {err}"
            );
        }
    }
}
