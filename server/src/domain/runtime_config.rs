//! Runtime configuration: string keys and values that operators set through
//! the admin API and scripts read with `fila.get`.

use super::error::ValidationError;

pub const MAX_CONFIG_KEY_BYTES: usize = 256;
pub const MAX_CONFIG_VALUE_BYTES: usize = 64 * 1024;

/// Validates a configuration key.
pub fn parse_config_key(key: &str) -> Result<&str, ValidationError> {
    if key.is_empty() || key.len() > MAX_CONFIG_KEY_BYTES {
        return Err(ValidationError::BadConfigKey { max: MAX_CONFIG_KEY_BYTES });
    }
    Ok(key)
}

/// Validates a configuration value.
pub fn check_config_value(value: &str) -> Result<(), ValidationError> {
    if value.len() > MAX_CONFIG_VALUE_BYTES {
        return Err(ValidationError::ConfigValueTooLarge { size: value.len(), max: MAX_CONFIG_VALUE_BYTES });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_bounded() {
        assert!(parse_config_key("tenant.acme.weight").is_ok());
        assert!(parse_config_key("").is_err());
        assert!(parse_config_key(&"k".repeat(MAX_CONFIG_KEY_BYTES + 1)).is_err());
        assert!(check_config_value("").is_ok());
        assert!(check_config_value(&"v".repeat(MAX_CONFIG_VALUE_BYTES + 1)).is_err());
    }
}
