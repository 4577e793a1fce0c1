# taximeter: a slim image that runs the proxy as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy proxy
COPY pricing pricing
COPY store store
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 taximeter
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER taximeter
WORKDIR /home/taximeter
# Listen on every interface inside the container; the database defaults to a
# SQLite file in the home directory unless TAXIMETER_DATABASE_URL is set.
ENV TAXIMETER_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 8787
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8787/healthz', timeout=2)"
CMD ["taximeter", "serve"]
