import PackagePlugin

/// Converts `openapi/openapi.yaml` (the HTTP contract) to JSON at build time and compiles it into
/// the gateway, which serves it at `/openapi.json`: one source of truth, nothing to ship beside
/// the binary.
@main
struct EmbedOpenAPI: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let input = context.package.directoryURL.appending(path: "openapi/openapi.yaml")
        let output = context.pluginWorkDirectoryURL.appending(path: "OpenAPIDocument.swift")
        return [
            .buildCommand(
                displayName: "Embedding openapi/openapi.yaml",
                executable: try context.tool(named: "openapi-embed").url,
                arguments: [input.path(), output.path()],
                inputFiles: [input],
                outputFiles: [output])
        ]
    }
}
