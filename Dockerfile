# The ermis server and the app it serves. TypeScript runs directly on Node 24 (no server build step);
# the app (login page) is built with Vite in a first stage.
FROM node:24-slim AS app
WORKDIR /build
COPY package.json package-lock.json ./
COPY server/package.json server/package.json
COPY app/package.json app/package.json
COPY tests/medplum-cli/package.json tests/medplum-cli/package.json
RUN npm ci --workspace app --ignore-scripts
COPY app app
RUN npm run build -w app

FROM node:24-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
COPY server/package.json server/package.json
COPY app/package.json app/package.json
COPY tests/medplum-cli/package.json tests/medplum-cli/package.json
RUN npm ci --omit=dev --workspace server && npm cache clean --force
COPY server/src server/src
COPY --from=app /build/app/dist app/dist
USER node
EXPOSE 8103
HEALTHCHECK --interval=10s --timeout=3s CMD node -e "fetch('http://127.0.0.1:8103/healthcheck').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
CMD ["node", "server/src/main.ts"]
