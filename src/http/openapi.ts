/** The OpenAPI 3.1 document served at `/openapi.json`. */
export const openApiDocument = Object.freeze({
  openapi: '3.1.0',
  info: { title: 'Bulkhead', version: '0.1.0' },
  paths: {},
});
