FROM node:20-slim AS build
WORKDIR /app
# better-sqlite3 (the embedded engine) compiles against Node's headers.
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
COPY scripts ./scripts
RUN npm run build && npm prune --omit=dev
# The R4 validators and the R4 element table (r4-rules.ts), generated now into node_modules/.cache (the running image cannot write there).
RUN node -e "require('./dist/src/fhir/validator').warmUpValidator()" && ls node_modules/.cache/p2p-fhir-server/fhir-r4-validators-*.js node_modules/.cache/p2p-fhir-server/r4-elements-*.json

FROM node:20-slim
WORKDIR /app
ENV HOST=0.0.0.0 PORT=3000 NODE_ENV=production DATA_DIR=/app/data
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# Configuration and keys are mounted (docker-compose.yml), never baked in; data goes to a volume.
RUN mkdir -p /app/config /app/keys /app/data && chown -R node:node /app/data
USER node
EXPOSE 3000
CMD ["node", "dist/src/main.js"]
