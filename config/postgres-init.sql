-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d), as POSTGRES_USER.
-- One server, three databases: Airflow's metadata, MLflow's tracking/registry store, the demo business DB.
-- psql's \gexec makes each CREATE conditional: POSTGRES_DB may already have created one of them.
SELECT 'CREATE DATABASE airflow' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'airflow')\gexec
SELECT 'CREATE DATABASE mlflow' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow')\gexec
SELECT 'CREATE DATABASE flights' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'flights')\gexec
