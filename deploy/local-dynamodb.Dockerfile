# The local DynamoDB (dynalite) of docker-compose.yml: the same package-lock.json
# and scripts/local-dynamodb as `make run`, so the compose stack and the tests
# run the same dynalite (4.0.0) with the same flags (tables ready at once).
# Development only: dynalite is not DynamoDB and has no authentication.
FROM node:20-slim

WORKDIR /opt/autopush
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error && npm cache clean --force
COPY scripts/local-dynamodb ./scripts/
# The named volume of docker-compose.yml takes this directory's owner when first mounted.
RUN mkdir /data && chown node:node /data

USER node
EXPOSE 8000
CMD ["scripts/local-dynamodb", "--port", "8000", "--host", "0.0.0.0", "--path", "/data"]
