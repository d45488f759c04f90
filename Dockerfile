# The one image of the production stack (docker-compose.yml): Airflow components, Celery workers and the MLflow
# server all run segflow's locked environment.
FROM python:3.11-slim
ENV UV_PROJECT_ENVIRONMENT=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
RUN pip install --no-cache-dir uv
WORKDIR /opt/segflow
COPY pyproject.toml uv.lock README.md ./
COPY segflow segflow
RUN uv sync --frozen --no-dev --extra production
COPY . .
