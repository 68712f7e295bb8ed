//! Config values that are names (`optim.kind = "lars"`, `augment.recipe = "moco-v2"`): unit
//! enums whose names are serde's kebab-case of their variants, so parsing and printing cannot
//! drift apart.

/// Declares a unit enum of config names (serde kebab-case) with `ALL`, `as_str`, `Display` and
/// comparison with `&str`.
macro_rules! config_names {
    (
        $(#[$meta:meta])*
        $vis:vis enum $ty:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "kebab-case")]
        $vis enum $ty {
            $($(#[$vmeta])* $variant),+
        }

        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name a config writes (serde's).
            pub fn as_str(self) -> &'static str {
                static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
                let names = NAMES.get_or_init(|| {
                    $ty::ALL
                        .iter()
                        .map(|v| match serde_json::to_value(v) {
                            Ok(serde_json::Value::String(s)) => s,
                            _ => String::new(),
                        })
                        .collect()
                });
                let i = $ty::ALL.iter().position(|&v| v == self).unwrap_or(0);
                names[i].as_str()
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}
