-- Runs once, on first start of an empty data directory (docker-entrypoint-initdb.d).
-- POSTGRES_DB=mlflow creates the tracking store; these are the other two databases.
-- Owner is POSTGRES_USER (dlor); its password comes only from the Secret / env file.
CREATE DATABASE mlflow_auth OWNER dlor;  -- MLflow basic-auth users and permissions
CREATE DATABASE optuna OWNER dlor;       -- Optuna RDBStorage (DLOR_OPTUNA_STORAGE)
