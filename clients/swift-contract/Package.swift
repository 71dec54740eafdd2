// swift-tools-version:6.2
// The Swift half of the client contract (issue 16): a client generated from openapi/openapi.yaml by
// swift-openapi-generator's build plugin, driven against a real gateway by scripts/client-contract.
// A package of its own, so that the gateway's package (built three times in CI) never builds the
// generator.
import PackageDescription

let package = Package(
    name: "swift-contract",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "client-contract", targets: ["ClientContract"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-openapi-generator", from: "1.14.3"),
        .package(url: "https://github.com/apple/swift-openapi-runtime", from: "1.13.4"),
        .package(url: "https://github.com/apple/swift-openapi-urlsession", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
    ],
    targets: [
        .executableTarget(
            name: "ClientContract",
            dependencies: [
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "OpenAPIURLSession", package: "swift-openapi-urlsession"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            plugins: [.plugin(name: "OpenAPIGenerator", package: "swift-openapi-generator")]
        ),
    ]
)
