//! Moving every sealed credential to a new secret key (`aiproxy reseal`).
use crate::crypto::Sealer;
use crate::store::{Store, StoreResult};

/// What a run did, account by account.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Accounts whose values were sealed again under the current key.
    pub moved: Vec<i64>,
    /// Accounts already under the current key (a repeated run).
    pub current: Vec<i64>,
    /// Accounts neither key opens, or changed during the run: left as they are.
    pub failed: Vec<i64>,
}

/// One sealed value under the current key, if it needs sealing again.
enum Seal {
    Current,
    Moved(String),
    Unreadable,
}

fn reseal_one(stored: &str, previous: &Sealer, current: &Sealer) -> Seal {
    if !current.is_sealed(stored) {
        // Kept in clear by an earlier version: sealed now.
        return Seal::Moved(current.seal(stored.as_bytes()));
    }
    if current.open(stored).is_ok() {
        return Seal::Current;
    }
    match previous.open(stored) {
        Ok(plain) => Seal::Moved(current.seal(&plain)),
        Err(_) => Seal::Unreadable,
    }
}

/// Seals every account's credentials and proxy URL again under `current`.
/// Values that already open with it are left alone, so a run cut short can
/// simply be repeated. Run it while no control plane is up: one still on
/// the previous key could not read what this wrote.
pub async fn reseal(store: &Store, previous: &Sealer, current: &Sealer) -> StoreResult<Resealed> {
    let mut done = Resealed::default();
    for account in store.list_accounts().await? {
        let credentials = reseal_one(&account.credentials_sealed, previous, current);
        let proxy = account
            .proxy_sealed
            .as_deref()
            .map(|p| reseal_one(p, previous, current));
        if matches!(credentials, Seal::Unreadable) || matches!(proxy, Some(Seal::Unreadable)) {
            tracing::error!(
                account_id = account.id,
                "neither the previous nor the current secret key opens this account's credentials"
            );
            done.failed.push(account.id);
            continue;
        }
        let moved = matches!(credentials, Seal::Moved(_)) || matches!(proxy, Some(Seal::Moved(_)));
        if !moved {
            done.current.push(account.id);
            continue;
        }
        let credentials = match credentials {
            Seal::Moved(sealed) => sealed,
            _ => account.credentials_sealed.clone(),
        };
        let proxy = match proxy {
            Some(Seal::Moved(sealed)) => Some(sealed),
            _ => account.proxy_sealed.clone(),
        };
        if store
            .replace_account_seals(
                account.id,
                &account.credentials_sealed,
                &credentials,
                proxy.as_deref(),
            )
            .await?
        {
            done.moved.push(account.id);
        } else {
            tracing::error!(
                account_id = account.id,
                "the account's credentials changed during the run (is a control plane up?); run again"
            );
            done.failed.push(account.id);
        }
    }
    Ok(done)
}
