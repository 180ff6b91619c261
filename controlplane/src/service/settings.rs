//! Runtime settings: typed reads, validated writes (a change reaches the
//! data planes with the next snapshot).
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::openapi::schema::{AdditionalProperties, ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{RefOr, schema::SchemaType};
use utoipa::{PartialSchema, ToSchema};

use super::{Actor, ServiceError, ServiceResult, Services};
use crate::settings::{Kind, SPECS, SystemSettings, validate};

/// The settings in force, which are stored rather than defaulted, and what
/// each one takes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SettingsView {
    /// Every setting's value in force.
    #[schema(value_type = SettingsPatch)]
    pub settings: Map<String, Value>,
    /// The settings stored in `system_configs` (the rest are defaults).
    pub stored: Vec<String>,
    pub specs: Vec<SettingSpec>,
}

/// One setting's type and limits.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SettingSpec {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: SettingType,
    /// `{min, max}` for numbers, the names for a choice or a list; null for a flag.
    pub allowed: Option<Allowed>,
    pub group: String,
    pub help: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SettingType {
    Bool,
    Int,
    Float,
    Choice,
    List,
}

/// What a setting accepts besides its type.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Allowed {
    Range {
        #[schema(value_type = f64)]
        min: serde_json::Number,
        #[schema(value_type = f64)]
        max: serde_json::Number,
    },
    Names(Vec<String>),
}

impl SettingSpec {
    fn of(spec: &crate::settings::Spec) -> SettingSpec {
        let names = |c: &[&str]| Some(Allowed::Names(c.iter().map(|n| n.to_string()).collect()));
        let (kind, allowed) = match spec.kind {
            Kind::Bool => (SettingType::Bool, None),
            Kind::Int { min, max } => (
                SettingType::Int,
                Some(Allowed::Range {
                    min: min.into(),
                    max: max.into(),
                }),
            ),
            Kind::Float { min, max } => {
                let number = |v: f64| serde_json::Number::from_f64(v).unwrap_or_else(|| 0.into());
                (
                    SettingType::Float,
                    Some(Allowed::Range {
                        min: number(min),
                        max: number(max),
                    }),
                )
            }
            Kind::Choice(c) => (SettingType::Choice, names(c)),
            Kind::List(c) => (SettingType::List, names(c)),
        };
        SettingSpec {
            key: spec.key.to_string(),
            kind,
            allowed,
            group: spec.group.to_string(),
            help: spec.help.to_string(),
        }
    }
}

/// Settings to change, by name; `null` returns a setting to its default.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct SettingsPatch(pub Map<String, Value>);

/// A property per setting, typed and bounded as the validation is.
impl PartialSchema for SettingsPatch {
    fn schema() -> RefOr<Schema> {
        let mut object = ObjectBuilder::new()
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .min_properties(Some(1))
            .description(Some(
                "Runtime settings by name; null returns one to its default",
            ));
        for spec in SPECS {
            let nullable = |t: Type| SchemaType::from_iter([t, Type::Null]);
            let property: RefOr<Schema> = match spec.kind {
                Kind::Bool => ObjectBuilder::new()
                    .schema_type(nullable(Type::Boolean))
                    .into(),
                Kind::Int { min, max } => ObjectBuilder::new()
                    .schema_type(nullable(Type::Integer))
                    .minimum(Some(min as f64))
                    .maximum(Some(max as f64))
                    .into(),
                Kind::Float { min, max } => ObjectBuilder::new()
                    .schema_type(nullable(Type::Number))
                    .minimum(Some(min))
                    .maximum(Some(max))
                    .into(),
                Kind::Choice(choices) => ObjectBuilder::new()
                    .schema_type(nullable(Type::String))
                    .enum_values(Some(
                        choices.iter().map(|c| Value::from(*c)).chain([Value::Null]),
                    ))
                    .into(),
                Kind::List(names) => ArrayBuilder::new()
                    .schema_type(nullable(Type::Array))
                    .items(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .enum_values(Some(names.iter().copied())),
                    )
                    .into(),
            };
            object = object.property(spec.key, property.description_of(spec.help));
        }
        object.into()
    }
}

impl ToSchema for SettingsPatch {}

/// Sets a property's description (schemas are built before they are named).
trait Described {
    fn description_of(self, help: &str) -> RefOr<Schema>;
}

impl Described for RefOr<Schema> {
    fn description_of(self, help: &str) -> RefOr<Schema> {
        match self {
            RefOr::T(Schema::Object(mut o)) => {
                o.description = Some(help.to_string());
                RefOr::T(Schema::Object(o))
            }
            RefOr::T(Schema::Array(mut a)) => {
                a.description = Some(help.to_string());
                RefOr::T(Schema::Array(a))
            }
            other => other,
        }
    }
}

impl Services {
    async fn settings_view(&self) -> ServiceResult<SettingsView> {
        let settings = SystemSettings::load(&self.store, &self.setting_defaults).await?;
        Ok(SettingsView {
            settings: settings
                .values()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            stored: settings.stored().iter().map(|k| k.to_string()).collect(),
            specs: SPECS.iter().map(SettingSpec::of).collect(),
        })
    }

    pub async fn get_settings(&self, actor: &Actor) -> ServiceResult<SettingsView> {
        actor.require_admin()?;
        self.settings_view().await
    }

    pub async fn update_settings(
        &self,
        actor: &Actor,
        patch: SettingsPatch,
    ) -> ServiceResult<SettingsView> {
        actor.require_admin()?;
        let change = validate(&patch.0).map_err(ServiceError::BadRequest)?;
        self.store
            .save_system_configs(&change.set, &change.unset)
            .await?;
        tracing::info!(user = %actor.name(), set = ?change.set.keys().collect::<Vec<_>>(), unset = ?change.unset, "settings changed");
        self.settings_view().await
    }
}
